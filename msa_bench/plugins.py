"""Plug-in discovery for the config: the schemas of every registered method and benchmark kind, and the core groups.

This sits above msa_bench/config (which imports nothing else from msa_bench) and below the CLI, which calls
`register_schemas()` once before Hydra composes a config; tests/conftest.py does so through the CLI module.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from msa_bench.benchmarks.base import register_benchmark_schemas
from msa_bench.config.schema import register_config_schemas
from msa_bench.methods.registry import register_method_schemas


def register_schemas() -> None:
    """Make every schema available to the YAML defaults lists (`/schema/<group>@_here_`, `/schema/method/<name>`,
    `/schema/benchmark/<kind>`)."""
    register_config_schemas()
    store = ConfigStore.instance()
    register_method_schemas(store)
    register_benchmark_schemas(store)
