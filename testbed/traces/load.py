"""`load_trace`: one entry point for every trace format and for the traces shipped with the
project (`load_trace("azure_conv")`; their files live in the repository's `traces/` folder)."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testbed.registry import Registry
from testbed.traces.formats import read_azure, read_bailian, read_burstgpt, read_mooncake, read_vidur
from testbed.traces.generic import read_generic
from testbed.traces.schema import Trace

TRACES_DIR = Path(__file__).resolve().parents[2] / "traces"

TRACE_FORMATS: Registry[Trace] = Registry("trace format")
for _name, _reader in {"azure": read_azure, "burstgpt": read_burstgpt, "mooncake": read_mooncake,
                       "bailian": read_bailian, "vidur": read_vidur,
                       "generic": read_generic}.items():
    TRACE_FORMATS.register(_name)(_reader)

SPLITWISE = ("Pratyush Patel, Esha Choukse, Chaojie Zhang, Aashaka Shah, Inigo Goiri, "
             "Saeed Maleki, Ricardo Bianchini. Splitwise: Efficient Generative LLM Inference "
             "Using Phase Splitting. ISCA 2024.")
MOONCAKE = ("Ruoyu Qin, Zheming Li, Weiran He, Jialei Cui, Feng Ren, Mingxing Zhang, "
            "Yongwei Wu, Weimin Zheng, Xinran Xu. Mooncake: Trading More Storage for Less "
            "Computation - A KVCache-centric Architecture for Serving LLM Chatbot. FAST 2025.")
EXAMPLE = "hand-made example, not real data"


@dataclass(frozen=True, slots=True)
class ShippedTrace:
    """A trace file in the repository's `traces/` folder, loadable by name."""

    format: str
    path: str  # relative to traces/
    description: str
    license: str = ""
    citation: str = ""
    options: Mapping[str, object] = field(default_factory=dict)


SHIPPED: dict[str, ShippedTrace] = {
    "azure_code": ShippedTrace(
        "azure", "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
        "Azure LLM inference, coding service, 2023-11-16, 8,819 requests over ~57 min",
        "CC-BY-4.0", SPLITWISE),
    "azure_conv": ShippedTrace(
        "azure", "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
        "Azure LLM inference, conversation service, 2023-11-16, 19,366 requests over ~58 min",
        "CC-BY-4.0", SPLITWISE),
    "mooncake_synthetic": ShippedTrace(
        "mooncake", "mooncake_fast25/synthetic_trace.jsonl",
        "Mooncake synthetic trace with prefix block hashes, 3,993 requests over ~17 min",
        "Apache-2.0", MOONCAKE),
    "example_azure2024": ShippedTrace("azure", "examples/azure2024_example.csv", EXAMPLE),
    "example_burstgpt": ShippedTrace("burstgpt", "examples/burstgpt_example.csv", EXAMPLE,
                                     options={"zero_output": "drop"}),
    "example_bailian": ShippedTrace("bailian", "examples/bailian_example.jsonl", EXAMPLE),
    "example_vidur": ShippedTrace("vidur", "examples/vidur_example.csv", EXAMPLE),
    "example_generic": ShippedTrace(
        "generic", "examples/generic_example.csv", EXAMPLE,
        options={"columns": {"arrival_s": "t_ms", "prompt_len": "input_tokens",
                             "output_len": "output_tokens"},
                 "time_unit": "ms", "hash_block_size": 4}),
}


def load_trace(name_or_format: str, path: str | Path | None = None, **options) -> Trace:
    """Load a shipped trace by name (`load_trace("azure_conv")`), or a file in a named
    format (`load_trace("mooncake", "x.jsonl", hash_block_size=16)`). Options override a
    shipped trace's own; each format's reader documents the ones it takes."""
    if path is None:
        if name_or_format not in SHIPPED:
            raise ValueError(
                f"{name_or_format!r} is not a shipped trace (shipped: {', '.join(SHIPPED)}); "
                f"to read a file give its format ({', '.join(TRACE_FORMATS.names())}) and path")
        shipped = SHIPPED[name_or_format]
        trace = _read(shipped.format, TRACES_DIR / shipped.path, {**shipped.options, **options})
        return trace.replace(name=name_or_format, license=shipped.license,
                             citation=shipped.citation)
    return _read(name_or_format, Path(path), options)


def _read(format: str, path: Path, options: Mapping[str, object]) -> Trace:
    reader = TRACE_FORMATS.get(format)
    _check_options(format, reader, options)
    if not path.exists():
        raise FileNotFoundError(f"{format} trace {path} does not exist")
    return reader(path, **options)


def _check_options(format: str, reader: Callable, options: Mapping[str, object]) -> None:
    accepted = [p for p in inspect.signature(reader).parameters if p != "path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"trace format {format!r} takes no option(s) {unknown}; "
                         f"its options: {', '.join(accepted) or 'none'}")
