"""Build a serving stack (scheduler + KV manager + executor + clock = an Engine) from a
config mapping shaped like the Hydra groups in `conf/`: `model`, `engine`, `hardware`,
`scheduler`, `cache`, `clock`. The replay experiment, the server and the calibration all
build their engines here, so the same names mean the same parts everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testbed import blas
from testbed.engine.engine import Engine
from testbed.kv import make_kv_manager, num_blocks_for_budget
from testbed.model.config import ModelConfig, named_config
from testbed.replay.clock import VirtualClock, make_clock
from testbed.sched import make_scheduler

GB = 1e9


@dataclass
class Stack:
    engine: Engine
    model_config: ModelConfig
    tokenizer: object | None = None  # testbed.tokenizer.Tokenizer for the real engine
    eos_token_ids: tuple[int, ...] = ()
    info: dict = field(default_factory=dict)  # what was built, for run.json


def build_stack(cfg: Mapping) -> Stack:
    engine_cfg = dict(cfg["engine"])
    kind = engine_cfg.get("kind")
    if kind == "mlx":
        executor, model_config, num_blocks, num_host, extra = _mlx_executor(cfg)
    elif kind == "sim":
        executor, model_config, num_blocks, num_host, extra = _sim_executor(cfg)
    else:
        raise ValueError(f"engine.kind={kind!r}: choose one of mlx, sim")
    cache = dict(cfg["cache"])
    sched_cfg = {k: v for k, v in dict(cfg["scheduler"]).items() if k != "name"}
    sched_cfg["max_model_len"] = min(int(sched_cfg.get("max_model_len", 1 << 30)),
                                     model_config.max_position_embeddings)
    kv = make_kv_manager(cache["name"], num_blocks, int(cache.get("block_size", 16)), num_host,
                         cache.get("eviction", "lru"), cache.get("reservation", "exact"),
                         sched_cfg["max_model_len"])
    scheduler = make_scheduler(cfg["scheduler"]["name"], sched_cfg, kv)
    clock = make_clock(dict(cfg.get("clock") or {"kind": "virtual"})["kind"])
    info = {"engine": kind, "model": model_config.to_dict(), "scheduler": cfg["scheduler"]["name"],
            "cache": cache["name"], "eviction": cache.get("eviction"),
            "reservation": cache.get("reservation"),
            "block_size": kv.block_size, "kv_blocks": num_blocks, "kv_host_blocks": num_host,
            **extra}
    overlap = kind == "mlx" and bool(engine_cfg.get("overlap", False))
    fast_forward = _fast_forward(engine_cfg, clock)
    return Stack(Engine(scheduler, executor, clock, overlap=overlap, fast_forward=fast_forward),
                 model_config,
                 extra.pop("_tokenizer", None),
                 extra.pop("_eos", ()), {k: v for k, v in info.items() if not k.startswith("_")})


def _fast_forward(engine_cfg: Mapping, clock) -> bool:
    """`engine.fast_forward`: the simulator takes runs of plain decode steps at once (default
    on). On the wall clock every step takes its real time, so it runs them one by one."""
    wanted = engine_cfg.get("fast_forward")
    if engine_cfg.get("kind") != "sim":
        if wanted:
            raise ValueError("engine.fast_forward=true needs the simulator (engine=sim): the real "
                             "engine runs every step")
        return False
    return (wanted is None or bool(wanted)) and isinstance(clock, VirtualClock)


def model_spec(model_cfg: Mapping) -> str:
    """The weights spec `load_model` takes: `dummy:<name>` or the configured source."""
    source = str(model_cfg.get("source") or "dummy")
    return f"dummy:{model_cfg['name']}" if source == "dummy" else source


def resolve_dtype(dtype: str | None) -> str:
    """`auto` (or unset): float32 on the CPU, where only float32 matmuls go through the fast
    BLAS, and bfloat16 on a GPU (Metal or CUDA), MLX's default device."""
    if dtype not in (None, "auto"):
        return dtype
    import mlx.core as mx

    return "float32" if mx.default_device().type == mx.cpu else "bfloat16"


def _mlx_executor(cfg: Mapping):
    import mlx.core as mx

    from testbed.engine.kv_pool import PagedKVPool
    from testbed.engine.mlx_executor import MLXExecutor
    from testbed.model.qwen2 import Qwen2Model
    from testbed.model.sampling import sample_sequences
    from testbed.weights import load_model

    e = dict(cfg["engine"])
    dtype = resolve_dtype(e.get("dtype"))
    block_size = int(cfg["cache"].get("block_size", 16))
    spec = model_spec(cfg["model"])
    loaded = load_model(spec, dtype=dtype)
    model = Qwen2Model(loaded.config, loaded.weights, dtype=dtype,
                       kernels=e.get("kernels", "fast"), quant_bits=e.get("quant_bits"),
                       quant_group_size=int(e.get("quant_group_size", 64)))
    num_blocks = num_blocks_for_budget(float(e["kv_memory_gb"]) * GB, loaded.config, dtype, block_size)
    host_gb = float(e.get("host_kv_memory_gb") or 0)
    num_host = num_blocks_for_budget(host_gb * GB, loaded.config, dtype, block_size) if host_gb else 0
    pool = PagedKVPool(loaded.config, num_blocks, block_size, dtype, num_host)
    mx.random.seed(int(e.get("seed", 0)))
    extra = {"weights": loaded.source, "dtype": dtype, "kernels": e.get("kernels", "fast"),
             "quant_bits": e.get("quant_bits"), "device": str(mx.default_device()),
             "blas": blas.status(), "weights_bytes": model.nbytes, "kv_pool_bytes": pool.nbytes,
             "_tokenizer": loaded.tokenizer, "_eos": tuple(loaded.eos_token_ids)}
    compile_decode = e.get("compile_decode", "auto")
    if compile_decode not in ("auto", True, False):
        raise ValueError(f"engine.compile_decode={compile_decode!r}: choose auto, true or false")
    executor = MLXExecutor(model, pool, sample_sequences,
                           None if compile_decode == "auto" else compile_decode)
    return executor, loaded.config, num_blocks, num_host, extra


def _sim_executor(cfg: Mapping):
    from testbed.sim import (COST_MODELS, HardwareProfile, SimExecutor, check_memory_fit,
                             load_fitted, swap_seconds_per_block)

    e = dict(cfg["engine"])
    dtype = e.get("dtype", "bfloat16")
    block_size = int(cfg["cache"].get("block_size", 16))
    model_config = sim_model_config(cfg["model"])
    hardware = HardwareProfile.from_dict(dict(cfg["hardware"]), source="hardware config")
    kv_gb = e.get("kv_memory_gb")
    fit = check_memory_fit(model_config, hardware, dtype, block_size,
                           kv_memory_bytes=None if kv_gb is None else float(kv_gb) * GB)
    host_gb = float(e.get("host_kv_memory_gb") or 0)
    num_host = int(host_gb * GB // fit.block_bytes)
    name = e.get("cost_model", "roofline")
    if name == "fitted":
        if not e.get("fitted_path"):
            raise ValueError("engine.cost_model=fitted needs engine.fitted_path (a JSON from "
                             "`python -m experiments.calibrate`)")
        cost = load_fitted(e["fitted_path"], model_config, dtype)  # refuses another shape or dtype
    else:
        cost = COST_MODELS.create(name, model=model_config, hardware=hardware, dtype=dtype)
    executor = SimExecutor(cost, swap_seconds_per_block(model_config, hardware, block_size, dtype))
    extra = {"dtype": dtype, "cost_model": name, "hardware": hardware.to_dict(),
             "weight_bytes": fit.weight_bytes, "kv_pool_bytes": fit.kv_bytes}
    return executor, model_config, fit.num_blocks, num_host, extra


def sim_model_config(model_cfg: Mapping) -> ModelConfig:
    """The simulator needs only the shape: a named config, or a local HF dir's config.json."""
    source = str(model_cfg.get("source") or "dummy")
    if source != "dummy" and Path(source, "config.json").exists():
        return ModelConfig.from_json(Path(source, "config.json"))
    return named_config(str(model_cfg["name"]))
