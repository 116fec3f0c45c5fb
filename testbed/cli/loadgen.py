"""`testbed loadgen`: replay a trace against an OpenAI-compatible server, measure the client side.

    python -m testbed loadgen --url http://127.0.0.1:8000 --trace azure_conv \\
        --max-requests 50 --time-scale 0.5 --timeout 120 --out loadgen-run/

`--trace` is a shipped trace's name, or a format (generic, azure, mooncake...) with `--path`.
Prints the summary (testbed.metrics) and, with `--out`, writes requests.parquet,
tokens.parquet, run.json and summary.json there.
"""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--trace", required=True, metavar="NAME_OR_FORMAT",
                        help="a shipped trace, or the format of the file given with --path")
    parser.add_argument("--path", default=None, help="trace file (with a format in --trace)")
    parser.add_argument("--trace-options", default=None, metavar="JSON",
                        help='reader options, e.g. \'{"columns": {"arrival_s": "ts"}}\'')
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--max-requests", type=int, default=100)
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply arrival times by this (0.5 = twice the rate, 0 = all at once)")
    parser.add_argument("--concurrency-limit", type=int, default=None,
                        help="most requests in flight at once (default: no limit)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for the whole run; then nothing more is sent and open "
                             "streams are cut")
    parser.add_argument("--prompt", choices=("auto", "tokens", "text"), default="auto",
                        help="send token ids or text (auto: token ids when the trace has them "
                             "or the vocabulary is known)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary for synthesized token ids (default: the server's)")
    parser.add_argument("--seed", type=int, default=0, help="for synthesized prompts")
    parser.add_argument("--out", default=None, metavar="DIR", help="write the results here")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a URL that is not a loopback address")


def run(args: argparse.Namespace) -> int:
    from testbed import loadgen
    from testbed.metrics import format_table, summary_tables
    from testbed.traces import load_trace

    try:
        config = loadgen.LoadConfig(
            url=args.url, model=args.model, max_requests=args.max_requests,
            time_scale=args.time_scale, concurrency_limit=args.concurrency_limit,
            timeout_s=args.timeout, prompt_kind=args.prompt, vocab_size=args.vocab_size,
            allow_remote=args.allow_remote, seed=args.seed)
        server = loadgen.endpoint(config.url, config.allow_remote)
        options = json.loads(args.trace_options) if args.trace_options else {}
        trace = load_trace(args.trace, args.path, **options)
        models = loadgen.list_models(server)
        model = config.model or models[0]["id"]
        vocab = config.vocab_size or next(
            (m.get("vocab_size") for m in models if m["id"] == model), None)
        planned = loadgen.plan_requests(trace, config, vocab)
    except (ValueError, OSError) as e:
        print(f"testbed loadgen: error: {e}", file=sys.stderr)
        return 2
    print(f"[loadgen] {len(planned)} requests of {trace.name} to {model} at {args.url} "
          f"(timeout {config.timeout_s:g} s)", file=sys.stderr)
    results = loadgen.run_load(planned, server, model, config)
    summary = loadgen.summarize_results(results)
    print("\n\n".join(format_table(t) for t in summary_tables(summary)[:2]))
    if args.out:
        meta = {"experiment": "loadgen", "url": args.url, "model": model,
                "trace": {"name": trace.name, "source": trace.source, "notes": list(trace.notes)},
                "options": {k: v for k, v in vars(args).items() if k != "url"}}
        loadgen.write_results(results, args.out, meta, summary)
        print(f"\nresults: {args.out}")
    return 0
