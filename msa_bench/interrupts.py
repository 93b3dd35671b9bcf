"""SIGTERM and SIGINT during a job become a RunInterrupted exception in the main thread.

Python's default SIGTERM ends the process at once: no `finally` runs, the W&B run stays open, a half-built cache
entry stays in its temporary folder and status.json keeps saying `running`. Raising instead unwinds the job like any
error: the runner closes its logger, the artifact store removes its temporaries, the job records `interrupted`, and
`msa-bench` exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell would report it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from msa_bench.errors import RunInterrupted

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def signals_raise_run_interrupted() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise RunInterrupted (once); the previous handlers come back after it.

    A second signal during the cleanup gets the previous behaviour (SIGINT: KeyboardInterrupt, SIGTERM: the process
    ends at once), so a stuck cleanup can still be stopped. Outside the main thread (where Python cannot install
    handlers, e.g. a launcher's worker thread) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def raise_interrupted(signum: int, _frame) -> None:
        restore()
        raise RunInterrupted(signum)

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, raise_interrupted)
    try:
        yield
    finally:
        restore()
