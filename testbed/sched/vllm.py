"""vLLM (v1): running sequences first (decodes and continuing prefill chunks, in admission
order), then waiting ones first come first served, all under the token budget and the
sequence cap; chunked prefill when enabled. Out of KV, the newest running sequence is
preempted. This is the base behaviour unchanged."""
from __future__ import annotations

from testbed.sched.base import SCHEDULERS, BaseScheduler


@SCHEDULERS.register("vllm")
class VLLMScheduler(BaseScheduler):
    pass
