"""Request traces: one schema, readers for the public formats, synthetic workloads,
transforms, and prompt tokens for traces that have none."""
from testbed.traces.load import SHIPPED, TRACE_FORMATS, load_trace
from testbed.traces.schema import Trace, TraceError

__all__ = ["SHIPPED", "TRACE_FORMATS", "Trace", "TraceError", "load_trace"]
