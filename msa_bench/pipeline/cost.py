"""Per-stage cost accounting: wall time, tokens, estimated FLOPs and peak memory.

Usage::

    with CostMeter("target") as meter:
        train(...)
        meter.add_tokens(n_tokens, n_params, training=True)
    record(meter.cost.to_dict())
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

BYTES_PER_MB = 2**20
_STATM_PATH = "/proc/self/statm"


@dataclass
class StageCost:
    """Cost of one pipeline stage; memory in MiB, ``memory_kind`` is "cpu_rss" or "cuda_allocated"."""

    stage: str
    wall_seconds: float
    tokens: int
    flops: float
    peak_memory_mb: float
    memory_kind: str
    # The memory preflight's estimate of the peak, made before the stage loaded its model (memory_preflight.py).
    estimated_peak_memory_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_rss_mb() -> float:
    """Resident set size of this process in MiB (peak RSS so far where /proc is unavailable)."""
    try:
        with open(_STATM_PATH) as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / BYTES_PER_MB
    except (OSError, ValueError, IndexError):
        return _max_rss_mb()


def _max_rss_mb() -> float:
    import resource

    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB elsewhere. It is the lifetime peak, so without /proc
    # a stage's peak may really belong to an earlier stage.
    return max_rss / BYTES_PER_MB if sys.platform == "darwin" else max_rss * 1024 / BYTES_PER_MB


def _resolve_device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class CostMeter:
    """Context manager measuring one stage; read ``meter.cost`` after the ``with`` block.

    On CPU a daemon thread samples the process RSS every ``sample_interval`` seconds; on CUDA the
    allocator's peak (``torch.cuda.max_memory_allocated``) is used. ``device=None`` picks CUDA when
    available.
    """

    def __init__(
        self,
        stage: str,
        *,
        device: str | None = None,
        sample_interval: float = 0.02,
        estimated_peak_memory_mb: float | None = None,
    ) -> None:
        self.stage = stage
        self.estimated_peak_memory_mb = estimated_peak_memory_mb
        self.device = _resolve_device(device)
        self.sample_interval = sample_interval
        self.tokens = 0
        self.flops = 0.0
        self._uses_cuda = self.device.startswith("cuda")
        self._peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._started: float | None = None
        self._cost: StageCost | None = None

    def add_tokens(self, n_tokens: int, n_params: int, *, training: bool = True) -> None:
        """Count processed tokens and their FLOPs: 6·N per token for training, 2·N for inference."""
        if n_tokens < 0 or n_params < 0:
            raise ValueError(f"n_tokens and n_params must be non-negative, got {n_tokens}, {n_params}")
        self.tokens += int(n_tokens)
        self.flops += (6.0 if training else 2.0) * n_params * n_tokens

    def add_flops(self, flops: float) -> None:
        """Count FLOPs not tied to tokens (e.g. checkpoint arithmetic)."""
        self.flops += float(flops)

    @property
    def cost(self) -> StageCost:
        if self._cost is None:
            raise RuntimeError(f"cost of stage {self.stage!r} is available only after its with-block exits")
        return self._cost

    def _sample_rss(self) -> None:
        self._peak_rss_mb = max(self._peak_rss_mb, current_rss_mb())

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.sample_interval):
            self._sample_rss()

    def __enter__(self) -> CostMeter:
        if self._started is not None:
            raise RuntimeError("a CostMeter measures a single stage; create a new one")
        if self._uses_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._sample_rss()
            self._sampler = threading.Thread(
                target=self._sample_until_stopped, name=f"cost-sampler:{self.stage}", daemon=True
            )
            self._sampler.start()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._uses_cuda:
            import torch

            # Kernels run asynchronously; wait for them so wall time covers the stage's work.
            torch.cuda.synchronize(self.device)
            wall_seconds = time.perf_counter() - self._started
            peak_mb = torch.cuda.max_memory_allocated(self.device) / BYTES_PER_MB
            memory_kind = "cuda_allocated"
        else:
            wall_seconds = time.perf_counter() - self._started
            self._stop.set()
            self._sampler.join()
            self._sample_rss()  # catches memory still held at the end of a stage shorter than one interval
            peak_mb = self._peak_rss_mb
            memory_kind = "cpu_rss"
        self._cost = StageCost(
            stage=self.stage,
            wall_seconds=wall_seconds,
            tokens=self.tokens,
            flops=self.flops,
            peak_memory_mb=peak_mb,
            memory_kind=memory_kind,
            estimated_peak_memory_mb=self.estimated_peak_memory_mb,
        )
