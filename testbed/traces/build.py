"""`build_trace(spec)`: a Trace from a config mapping, as a Hydra `trace` group holds it.

Exactly one source:
  name: azure_conv                          # a shipped trace
  format: mooncake, path: /data/x.jsonl     # a file in a named format
  synthetic: {n: 1000, arrivals: {kind: poisson, rate: 4}, prompt_len: {kind: lognormal,
              mean: 1000, cv: 1}, output_len: 200, seed: 0}   # or lengths_from: azure_conv
and optionally `options` (reader options) and `transforms` (see `apply_transforms`).
"""
from __future__ import annotations

from collections.abc import Mapping

from testbed.traces.load import load_trace
from testbed.traces.schema import Trace
from testbed.traces.synthetic import synthetic_trace
from testbed.traces.transforms import apply_transforms

SPEC_KEYS = ("name", "format", "path", "options", "synthetic", "transforms")


def build_trace(spec: Mapping) -> Trace:
    spec = {k: v for k, v in dict(spec).items() if v is not None}
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"trace config: unknown key(s) {unknown}; known: {', '.join(SPEC_KEYS)}")
    sources = [k for k in ("name", "format", "synthetic") if k in spec]
    if len(sources) != 1 or ("format" in spec) != ("path" in spec):
        raise ValueError("trace config: give exactly one of `name` (a shipped trace), "
                         f"`format` with `path`, or `synthetic`; got {sorted(spec)}")
    options = dict(spec.get("options") or {})
    if "synthetic" in spec:
        if options:
            raise ValueError("trace config: `options` are for trace files, not `synthetic`")
        trace = synthetic_trace(**dict(spec["synthetic"]))
    elif "name" in spec:
        trace = load_trace(spec["name"], **options)
    else:
        trace = load_trace(spec["format"], spec["path"], **options)
    return apply_transforms(trace, spec.get("transforms"))
