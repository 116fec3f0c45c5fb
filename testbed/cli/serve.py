"""`testbed serve`: an OpenAI-compatible HTTP server around the real engine.

    python -m testbed serve --model dummy:qwen2-tiny --port 8000 --record rec/ \\
        scheduler=sarathi cache=prefix engine.dtype=float32

Trailing arguments are Hydra overrides of the replay experiment's config groups (`conf/`).
With `--record DIR` every served request becomes a row of `DIR/trace.jsonl` (replay it with
`python -m experiments.replay trace=recorded trace.path=DIR/trace.jsonl`),
next to the steps/requests/tokens Parquet logs of a replay run. Ctrl-C (or SIGTERM) stops the server,
aborts requests in flight and completes the recording.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="HF directory, .gguf file, HF repo id, or dummy:<config name>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--served-model-name", default=None,
                        help="the model name clients use (default: --model as given)")
    parser.add_argument("--record", metavar="DIR", default=None,
                        help="record served traffic as a trace plus run logs into DIR")
    parser.add_argument("--record-text", action="store_true",
                        help="also record each prompt's text in the trace")
    parser.add_argument("--log-requests", action="store_true", help="log every HTTP request")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides, e.g. scheduler=sarathi cache=prefix engine.dtype=float32")


def run(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException

    from testbed.server import Server, serve_config

    logging.basicConfig(level=logging.INFO if args.log_requests else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if args.record_text and args.record is None:
        print("testbed serve: error: --record-text needs --record DIR", file=sys.stderr)
        return 2
    try:
        cfg = serve_config(args.model, args.overrides)
        server = Server(cfg, model_name=args.served_model_name or args.model,
                        host=args.host, port=args.port, record_dir=args.record,
                        record_text=args.record_text)
    except (ValueError, OSError, HydraException) as e:
        print(f"testbed serve: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"serving {server.card.name} (context {server.card.context_len} tokens) at "
          f"{server.url}/v1", flush=True)
    if args.record:
        print(f"recording into {args.record}", flush=True)
    while not stop.wait(0.5):
        if not server.loop.alive:
            break
    server.close()
    if server.loop.error is not None:
        print(f"testbed serve: the engine failed: {server.loop.error!r}", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0
