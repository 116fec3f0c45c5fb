"""The serving process: config -> stack -> engine loop + HTTP server (+ recording).

    cfg = serve_config("dummy:qwen2-tiny", ["scheduler=sarathi"])
    with Server(cfg, port=0, record_dir="rec") as server:
        ...  # server.url is http://127.0.0.1:<port>

`serve_config` composes the same Hydra config groups as the replay experiment (`conf/`),
with the real engine and the wall clock.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from testbed.metrics import SLO
from testbed.server.engine_loop import EngineLoop
from testbed.server.http import OpenAIHTTPServer
from testbed.server.prometheus import ServerMetrics
from testbed.server.protocol import ModelCard
from testbed.server.recording import TrafficRecorder
from testbed.stack import Stack, build_stack

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DUMMY_PREFIX = "dummy:"
# Replay-only settings, left out of a server's config.
REPLAY_ONLY = ("trace", "report", "progress", "max_steps")


def serve_config(model: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config mapping for `build_stack`: `conf/config.yaml` with `engine=mlx clock=wall`,
    then `overrides` (Hydra syntax), then the model `model` names (a weights spec as
    `load_model` takes it: dummy:<config name>, a directory, a .gguf file, a hub repo id)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        composed = compose(config_name="config", overrides=["engine=mlx", "clock=wall", *overrides])
    cfg = OmegaConf.to_container(composed, resolve=True)
    if model.startswith(DUMMY_PREFIX):
        cfg["model"] = {**cfg["model"], "name": model.removeprefix(DUMMY_PREFIX), "source": "dummy"}
    else:
        cfg["model"] = {**cfg["model"], "name": Path(model).name or model, "source": model}
    if cfg["engine"].get("kind") != "mlx":
        raise ValueError(f"the server runs the real engine: engine.kind must be mlx, "
                         f"got {cfg['engine'].get('kind')!r}")
    if cfg["clock"].get("kind") != "wall":
        raise ValueError(f"the server runs on the wall clock: clock.kind must be wall, "
                         f"got {cfg['clock'].get('kind')!r}")
    for key in REPLAY_ONLY:
        cfg.pop(key, None)
    return cfg


def context_len(stack: Stack) -> int:
    """The most tokens one request may hold: max_model_len, or the KV pool if smaller."""
    sched = stack.engine.scheduler
    return min(sched.config.max_model_len, sched.kv.num_blocks * sched.kv.block_size)


class Server:
    """An OpenAI-compatible server around the engine `cfg` describes; `start()` then
    `close()`. The stack is built (by `build`, on the engine loop's thread) right away."""

    def __init__(self, cfg: Mapping[str, Any], *, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000, record_dir: str | Path | None = None,
                 record_text: bool = False, build: Callable[[Mapping], Stack] = build_stack):
        name = model_name or _spec_name(cfg)
        self.httpd = OpenAIHTTPServer((host, port), self)  # bind first: fail before loading
        self.record_text = record_text
        self.created = int(time.time())
        self.metrics = ServerMetrics(name, lambda: self.loop.state)
        self.recording = None
        observers: list = [self.metrics]
        if record_dir is not None:
            self.recording = TrafficRecorder(
                record_dir, record_text=record_text, slo=SLO.from_dict(cfg.get("slo") or {}),
                tokens=bool(cfg.get("record_tokens", True)),
                flush_every=int(cfg.get("flush_every", 5000)))
            observers.append(self.recording)
        self.loop = EngineLoop(
            observers,
            on_idle=self.recording.flush_if_due if self.recording else None,
            idle_tick_s=self.recording.flush_interval_s if self.recording else None,
            on_exit=self.recording.close if self.recording else None)
        try:
            stack = self.loop.start(lambda: _with_tokenizer(build(cfg)))
        except BaseException:
            self.httpd.server_close()
            raise
        self.tokenizer = stack.tokenizer
        vocab = min(stack.model_config.vocab_size, self.tokenizer.vocab_size)
        self.card = ModelCard(name, context_len(stack), vocab, tuple(stack.eos_token_ids))
        if self.recording is not None:
            self.recording.start({"experiment": "serve", "config": dict(cfg),
                                  "served_model_name": name, "context_len": self.card.context_len,
                                  **stack.info})
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                             daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def models_body(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.card.name, "object": "model", "created": self.created,
            "owned_by": "testbed", "max_model_len": self.card.context_len,
            "vocab_size": self.card.vocab_size}]}

    def start(self) -> Server:
        """Serve HTTP (the engine loop is already running)."""
        self._http_thread.start()
        return self

    def close(self) -> None:
        """Stop accepting connections, abort what is in flight, finish the recording."""
        if self._http_thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.loop.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _with_tokenizer(stack: Stack) -> Stack:
    if stack.tokenizer is None:
        raise ValueError(f"{stack.info.get('weights', 'the model')} has no tokenizer; the "
                         "server needs one to read prompts and write text")
    return stack


def _spec_name(cfg: Mapping[str, Any]) -> str:
    model = cfg["model"]
    return f"{DUMMY_PREFIX}{model['name']}" if model.get("source") in (None, "dummy") else model["source"]
