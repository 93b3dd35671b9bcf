"""Model references: how the pipeline names a model state, and the plain form configs take in cache keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf


@dataclass(frozen=True)
class ModelRef:
    """A model directory (in the cache, or a hub snapshot) and the key that identifies how it was made."""

    path: Path
    key: str
    label: str


def plain(node) -> dict:
    """A config dataclass (or dict) as a plain dict, the form it takes inside a cache key."""
    return (
        OmegaConf.to_container(OmegaConf.structured(node), resolve=True)
        if not isinstance(node, dict)
        else node
    )
