"""Request traces: one schema, readers for the public formats, synthetic workloads,
transforms, and prompt tokens for traces that have none."""
from testbed.traces.build import build_trace
from testbed.traces.load import SHIPPED, TRACE_FORMATS, load_trace
from testbed.traces.schema import Trace, TraceError, validate
from testbed.traces.synthetic import ARRIVALS, LENGTHS, synthetic_trace
from testbed.traces.tokens import synthesize_prompt_tokens, with_prompt_tokens
from testbed.traces.transforms import TRANSFORMS, apply_transforms

__all__ = ["ARRIVALS", "LENGTHS", "SHIPPED", "TRACE_FORMATS", "TRANSFORMS", "Trace", "TraceError",
           "apply_transforms", "build_trace", "load_trace", "synthesize_prompt_tokens",
           "synthetic_trace", "validate", "with_prompt_tokens"]
