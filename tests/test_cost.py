"""Tests for per-stage cost accounting (CPU path)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from msa_bench.pipeline.cost import CostMeter, StageCost, current_rss_mb


def _sampler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("cost-sampler:")]


def test_wall_time_tokens_and_flops() -> None:
    with CostMeter("target", device="cpu") as meter:
        time.sleep(0.1)
        meter.add_tokens(1_000, 50, training=True)
        meter.add_tokens(200, 50, training=False)

    cost = meter.cost
    assert isinstance(cost, StageCost)
    assert 0.1 <= cost.wall_seconds < 5.0
    assert cost.tokens == 1_200
    assert cost.flops == 6 * 50 * 1_000 + 2 * 50 * 200
    assert cost.memory_kind == "cpu_rss" and cost.peak_memory_mb > 0
    assert cost.to_dict() == {
        "stage": "target",
        "wall_seconds": cost.wall_seconds,
        "tokens": 1_200,
        "flops": cost.flops,
        "peak_memory_mb": cost.peak_memory_mb,
        "memory_kind": "cpu_rss",
        "estimated_peak_memory_mb": None,  # only the pipeline's stages run the memory preflight
    }


def test_cost_unavailable_inside_stage() -> None:
    meter = CostMeter("oracle", device="cpu")
    with pytest.raises(RuntimeError):
        _ = meter.cost
    with pytest.raises(ValueError):
        meter.add_tokens(-1, 10)


def test_peak_memory_sees_large_allocation() -> None:
    baseline_mb = current_rss_mb()
    with CostMeter("oracle", device="cpu") as meter:
        array = np.ones(200 * 2**20 // 8)  # 200 MiB, written so the pages are resident
        time.sleep(0.1)
        del array
    assert meter.cost.peak_memory_mb - baseline_mb >= 150


def test_sampler_thread_stops_even_on_exception() -> None:
    with CostMeter("eval", device="cpu"):
        assert len(_sampler_threads()) == 1
    assert not _sampler_threads()

    with pytest.raises(KeyError):
        with CostMeter("eval", device="cpu") as meter:
            raise KeyError("boom")
    assert not _sampler_threads()
    assert meter.cost.stage == "eval"
