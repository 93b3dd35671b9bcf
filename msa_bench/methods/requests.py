"""The pipeline as one sequential deletion request sees it (benchmark.requests > 1, docs/sequential_requests.md).

A loss-based method unlearns request k from its model after request k-1 by running its ordinary `produce` on a
`RequestScope`: the scope answers `target()` with the model the request starts from (which the method trains and,
for NPO-style losses and a KL retain term, also takes as the frozen reference), `forget_items()` with the request's
items and `forget_split` with the request's data id (so the cache key names both), and records the method's stages
under the request's name. Everything else is the run's pipeline.
"""

from __future__ import annotations


class RequestScope:
    """`pipeline` with the forget set and starting model of one request."""

    def __init__(self, pipeline, request, start):
        self._pipeline = pipeline
        self._request = request
        self._start = start

    def __getattr__(self, name: str):
        return getattr(self._pipeline, name)

    @property
    def forget_split(self) -> str:
        return self._request.data_id

    def forget_items(self) -> list[dict]:
        return self._request.items

    def target(self):
        return self._start

    def cached_model(self, stage: str, kind: str, spec: dict, build, label: str | None = None, **kwargs):
        # The request's own stage name keeps each request's cost apart in results.json's `cost`.
        return self._pipeline.cached_model(
            request_stage(stage, self._request.index), kind, spec, build, label, **kwargs
        )


def request_stage(stage: str, index: int) -> str:
    """A stage's name when it belongs to request `index`."""
    return f"{stage} (request {index})"
