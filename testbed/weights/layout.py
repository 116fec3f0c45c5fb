"""The tensors a Qwen2 checkpoint must hold, with the shapes its config implies."""
from __future__ import annotations

from typing import Mapping, Sequence

from testbed.model.config import ModelConfig
from testbed.model.qwen2 import expected_shapes  # the one definition of a checkpoint's tensors

__all__ = ["expected_shapes", "is_norm", "check_shapes"]


def is_norm(name: str) -> bool:
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


def check_shapes(found: Mapping[str, Sequence[int]], cfg: ModelConfig, source: str,
                 where: Mapping[str, str] | None = None) -> None:
    """Raise ValueError unless `found` (name -> shape) has every expected tensor with its
    expected shape. Extra tensors are allowed. `where` names the file of each tensor."""
    where = where or {}
    expected = expected_shapes(cfg)
    missing = [name for name in expected if name not in found]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ValueError(f"{source}: missing tensor(s) {listed}")
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise ValueError(f"{where.get(name, source)}: tensor {name} has shape "
                             f"{tuple(found[name])}, but the config implies {shape}")
