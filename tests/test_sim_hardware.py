"""Hardware profiles: every shipped YAML loads (as Hydra composes it, too); bad keys are named."""
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from testbed.sim.hardware import PROFILE_DIR, HardwareProfile, load_profile, profile_names

EXPECTED = {"a100", "cpu", "h100", "h200", "m2_ultra", "m4_pro"}


def test_every_profile_loads():
    assert EXPECTED <= set(profile_names())
    for name in profile_names():
        hw = load_profile(name)
        assert hw.name == name
        assert hw.mem_bandwidth > 0 and hw.memory_bytes > 0 and 0 < hw.mfu <= 1 and 0 < hw.mbu <= 1
        assert all(v > 0 for v in hw.peak_flops.values())


def test_datasheet_numbers():
    h100, h200, a100 = load_profile("h100"), load_profile("h200"), load_profile("a100")
    assert h100.flops("bfloat16") == h200.flops("bfloat16") == 989e12
    assert (h100.mem_bandwidth, h200.mem_bandwidth, a100.mem_bandwidth) == (3.35e12, 4.8e12, 2.039e12)
    assert a100.flops("bfloat16") == 312e12
    assert load_profile("m4_pro").mem_bandwidth == 273e9


def test_hydra_composes_the_hardware_group():
    with initialize_config_dir(config_dir=str(PROFILE_DIR.parent), version_base=None):
        for name in profile_names():
            cfg = compose(overrides=[f"+hardware={name}"])
            hw = HardwareProfile.from_dict(OmegaConf.to_container(cfg.hardware), name)
            assert hw == load_profile(name)
            assert HardwareProfile.from_dict(dict(cfg.hardware), name) == hw  # nested DictConfig


def test_plain_yaml_reader_strings_are_parsed():
    # PyYAML (YAML 1.1) reads `989e12` as a string; the profile still gets the number.
    d = yaml.safe_load((PROFILE_DIR / "h100.yaml").read_text())
    assert isinstance(d["mem_bandwidth"], str)
    assert HardwareProfile.from_dict(d) == load_profile("h100")


def base() -> dict:
    return load_profile("h100").to_dict()


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="h100.yaml: unknown key.*mem_bandwith"):
        HardwareProfile.from_dict({**base(), "mem_bandwith": 1e12}, "h100.yaml")


def test_missing_and_bad_values_named():
    d = base()
    del d["mfu"]
    with pytest.raises(ValueError, match="missing key.*mfu"):
        HardwareProfile.from_dict(d)
    with pytest.raises(ValueError, match="mem_bandwidth must be a number, got 'fast'"):
        HardwareProfile.from_dict({**base(), "mem_bandwidth": "fast"})
    with pytest.raises(ValueError, match="mbu must be in"):
        HardwareProfile.from_dict({**base(), "mbu": 1.5})
    with pytest.raises(ValueError, match="host_link_bandwidth must be a finite positive"):
        HardwareProfile.from_dict({**base(), "host_link_bandwidth": 0})
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        HardwareProfile.from_dict({**base(), "peak_flops": {"fp8": 1e15}})
    with pytest.raises(ValueError, match="peak_flops.bfloat16 must be a number"):
        HardwareProfile.from_dict({**base(), "peak_flops": {"bfloat16": True}})


def test_unknown_profile_lists_the_known(tmp_path):
    with pytest.raises(ValueError, match="unknown hardware profile 'tpu'.*h100"):
        load_profile("tpu")
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\npeak_flops: {float32: 1e12}\nmem_bandwidth: 1e11\nmfu: 0.5\nmbu: 0.5\n"
                    "step_overhead_s: 0\nhost_link_bandwidth: 1e10\nmemory_bytes: 16e9\n")
    assert load_profile(path).flops("float32") == 1e12
    assert load_profile(Path(path)).interconnect_bandwidth == 0
