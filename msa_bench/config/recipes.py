"""Finding the training recipes (TrainRecipe) of a typed config by their dotted keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, is_dataclass

from msa_bench.config.schema import TrainRecipe


def iter_recipes(node, prefix: str = "") -> Iterator[tuple[str, TrainRecipe]]:
    """(dotted key, recipe) for every TrainRecipe in `node` at any depth: model.instruct, benchmark.target_recipe,
    method.recipe, method.forget_recipe, ..."""
    if isinstance(node, TrainRecipe):
        yield prefix, node
    elif is_dataclass(node):
        for f in fields(node):
            yield from iter_recipes(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)


def recipe_key(config, recipe: TrainRecipe) -> str:
    """The dotted key of `recipe` (the same object) in `config`, or "the stage's recipe" when it is not there."""
    return next((key for key, found in iter_recipes(config) if found is recipe), "the stage's recipe")
