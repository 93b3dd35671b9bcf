"""Model references: how the pipeline names a model state, and the plain form configs take in cache keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from msa_bench.config.cache_keys import without_default_options


@dataclass(frozen=True)
class ModelRef:
    """A model directory (in the cache, or a hub snapshot) and the key that identifies how it was made."""

    path: Path
    key: str
    label: str

    @classmethod
    def in_artifact(cls, artifact, label: str, subfolder: str = "") -> ModelRef:
        """The model saved in a cache entry (or in `subfolder` of it). Its key is the entry's `content_key`, so a
        model rebuilt with other bytes gives every stage made from it another key."""
        key = f"{artifact.content_key}/{subfolder}" if subfolder else artifact.content_key
        return cls(artifact.path / subfolder if subfolder else artifact.path, key, label)


def plain(node) -> dict:
    """A config dataclass (or dict) as a plain dict, the form it takes inside a cache key (options marked
    OMIT_AT_DEFAULT are left out while at their defaults: msa_bench/config/cache_keys.py)."""
    if isinstance(node, dict):
        return node
    return without_default_options(node, OmegaConf.to_container(OmegaConf.structured(node), resolve=True))
