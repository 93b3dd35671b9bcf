"""Benchmarks: where a benchmark's data comes from, what the target and the oracle learn, and what is evaluated.

One class per benchmark kind (TOFU, RESTOR, MUSE). The pipeline builds the model states; a benchmark only says which
items go into each of them, so adding a benchmark never touches the pipeline or the runner.
"""

from msa_bench.benchmarks.base import Benchmark, BenchmarkError, make_benchmark

__all__ = ["Benchmark", "BenchmarkError", "make_benchmark"]
