"""testbed: a trace-driven research testbed for LLM serving around a raw-MLX Qwen2 engine."""
from testbed import blas as _blas

_blas.activate()  # before anything imports mlx.core (see testbed/blas.py)

__version__ = "0.1.0"
