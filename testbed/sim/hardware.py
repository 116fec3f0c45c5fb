"""What a cost model needs to know about one accelerator: peak rates, achievable fractions,
memory. Profiles live in `conf/hardware/<name>.yaml` (the Hydra `hardware` group) as flat
mappings of the fields below; every number is per device, in SI units (FLOP/s, bytes/s, bytes).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from omegaconf import OmegaConf

PROFILE_DIR = Path(__file__).resolve().parents[2] / "conf" / "hardware"

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """One device. `mfu` / `mbu` are the fractions of peak FLOP/s and bandwidth that real
    kernels reach (model FLOP / bandwidth utilization); `step_overhead_s` is the fixed cost of
    a step (kernel launches, scheduling, sampling). `host_link_bandwidth` carries swapped KV
    blocks between device and host memory; `interconnect_bandwidth` (per direction, 0 = none)
    carries tensor-parallel all-reduces between devices of one node."""

    name: str
    peak_flops: dict[str, float]
    mem_bandwidth: float
    mfu: float
    mbu: float
    step_overhead_s: float
    host_link_bandwidth: float
    memory_bytes: float
    interconnect_bandwidth: float = 0.0

    def flops(self, dtype: str) -> float:
        """Peak FLOP/s for matmuls in `dtype`."""
        try:
            return self.peak_flops[dtype]
        except KeyError:
            raise ValueError(f"hardware {self.name!r} has no peak_flops for dtype {dtype!r} "
                             f"(it lists {', '.join(self.peak_flops)})") from None

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "hardware profile") -> "HardwareProfile":
        """Build from a mapping; an unknown, missing or non-numeric key is a ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        required = {f.name for f in fields(cls) if f.name != "interconnect_bandwidth"}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"{source}: missing key(s) {', '.join(missing)}")
        kw = {k: _number(v, f"{source}: {k}", positive=k in _POSITIVE)
              for k, v in d.items() if k not in ("name", "peak_flops")}
        peak = d["peak_flops"]
        if not isinstance(peak, Mapping) or not peak:
            raise ValueError(f"{source}: peak_flops must map dtype -> FLOP/s, got {peak!r}")
        for dtype in peak:
            dtype_bytes(str(dtype))
        kw["peak_flops"] = {str(k): _number(v, f"{source}: peak_flops.{k}", positive=True)
                            for k, v in peak.items()}
        for key in ("mfu", "mbu"):
            if not 0 < kw[key] <= 1:
                raise ValueError(f"{source}: {key} must be in (0, 1], got {kw[key]}")
        return cls(name=str(d["name"]), **kw)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_POSITIVE = {"mem_bandwidth", "mfu", "mbu", "host_link_bandwidth", "memory_bytes"}


def _number(value, where: str, positive: bool = False) -> float:
    """A finite number, >= 0 (or > 0); YAML 1.1 readers leave `989e12` a string, so parse those."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ValueError(f"{where} must be a finite {'positive' if positive else 'non-negative'} "
                         f"number, got {value!r}")
    return x


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (`conf/hardware/<name>.yaml`) or from a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown hardware profile {str(name_or_path)!r}; "
                             f"choose one of: {', '.join(profile_names())}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of profile fields")
    return HardwareProfile.from_dict(data, str(path))


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
