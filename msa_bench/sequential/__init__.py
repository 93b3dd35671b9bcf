"""Sequential deletion requests (benchmark.requests > 1): the forget set unlearnt request by request, each step
evaluated on its own items, on the earlier requests' items and on utility (docs/sequential_requests.md)."""

from msa_bench.metrics.registry import REQUEST_PREFIX
from msa_bench.sequential.driver import (
    SequentialResults,
    checked_requests,
    request_key,
    request_stage_names,
    run_requests,
)

__all__ = [
    "REQUEST_PREFIX",
    "SequentialResults",
    "checked_requests",
    "request_key",
    "request_stage_names",
    "run_requests",
]
