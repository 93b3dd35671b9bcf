"""Benchmarks: where a benchmark's data comes from, what the target and the oracle learn, and what is evaluated.

One module per benchmark (TOFU, RESTOR, MUSE), discovered by the registry in base.py. The pipeline builds the model
states; a benchmark only says which items go into each of them and sees the run through a `BenchmarkContext`, so
adding a benchmark never touches the pipeline or the runner (docs/adding_a_benchmark.md).
"""

from msa_bench.benchmarks.base import (
    Benchmark,
    BenchmarkContext,
    BenchmarkError,
    ForgetSplits,
    make_benchmark,
    register_benchmark,
)

__all__ = [
    "Benchmark",
    "BenchmarkContext",
    "BenchmarkError",
    "ForgetSplits",
    "make_benchmark",
    "register_benchmark",
]
