"""What a run shows on the console: one line per stage ("stage k of N", and the time left while training), then the
table. Everything libraries print (Trainer loss dicts, weight-loading bars, the W&B banner, git's complaints from
lm-eval) goes to the run's log file instead, unless `progress=verbose`.

The runner opens one `RunProgress` per job with `run_progress(...)` and marks its own stages; code further down
reports to whatever display is active through `current_progress()`, which is a silent stand-in outside a run:
the artifact store says when it builds something (a prerequisite such as the pretraining history is shown inside
the stage that needed it), and the trainer says how many steps are done.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TextIO

from msa_bench.config.schema import ProgressMode
from msa_bench.failures import remember_failure_context

# The artifacts a method builds as its own stages (fine-tuned vectors, the unlearned model); others are prerequisites.
METHOD_ARTIFACT_KINDS = frozenset({"finetune", "unlearned", "fisher"})  # fisher: msa_fisher's importances
_REDRAW_INTERVAL_S = 0.25


class _SilentProgress:
    """The display outside a run (tests, scripts calling library code): every report is ignored."""

    @contextmanager
    def artifact(self, kind: str, key: str) -> Iterator[None]:
        yield

    def building(self, kind: str) -> None:
        pass

    def training_step(self, done: int, total: int) -> None:
        pass


_active: RunProgress | _SilentProgress = _SilentProgress()


def current_progress() -> RunProgress | _SilentProgress:
    return _active


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RunProgress:
    """The stage lines of one job. `stages` are the titles of every stage the job will run, in order."""

    def __init__(
        self, stages: Sequence[str], console: TextIO | None, label: str = "", in_place: bool = True
    ) -> None:
        self._stages = list(stages)
        self._console = console  # None: show nothing (progress=off)
        # Redraw one line while a stage runs only on a terminal; a file or pipe gets one line per stage.
        self._in_place = bool(in_place and console is not None and console.isatty())
        self._prefix = f"{label} " if label else ""
        self._index = -1
        self._stage_started = 0.0
        self._built: list[str] = []  # what the current stage built (empty: everything came from the cache)
        self._requested = 0
        self._building: list[str] = []  # the artifacts being built now, outermost first
        # While training: steps done, steps total, and when the first step ended (the time-left estimate's origin).
        self._training: tuple[int, int, float] | None = None
        self._method_stages: list[str] | None = None
        self._seen: set[tuple[str, str]] = set()  # (kind, key) of every artifact this job has fetched
        self._close: Callable[[], None] = lambda: None
        self._last_draw = 0.0

    # ------------------------------------------------------------------ the runner's stages
    @contextmanager
    def stage(self, title: str | None = None) -> Iterator[None]:
        """One stage of the plan: the next title, unless given (a title must be one of the plan's)."""
        self._begin(title)
        try:
            yield
        except BaseException as error:  # the one-line error of a known failure names the stage (failures.py)
            remember_failure_context(error, stage=self.position())
            self._end(failed=True)
            raise
        self._end()

    @contextmanager
    def method_stages(self, titles: Sequence[str]) -> Iterator[None]:
        """The method's own stages: each artifact the method builds (or reuses) at the top level closes one."""
        self._method_stages = list(titles)
        if self._method_stages:
            self._begin(self._method_stages.pop(0))
        try:
            yield
        except BaseException as error:
            remember_failure_context(error, stage=self.position())
            self._method_stages = None
            if self._index >= 0 and self._stage_started:
                self._end(failed=True)
            raise
        finally:
            remaining, self._method_stages = self._method_stages, None
            if remaining is not None and self._index >= 0 and self._stage_started:
                self._end()
                for title in remaining:  # planned, but the method needed no artifact for them
                    self._begin(title)
                    self._end()

    def close(self) -> None:
        """End the display of a job opened with `start_run_progress`: the console is given back."""
        self._close()

    def message(self, text: str) -> None:
        """A line of its own (a warning), above the stage line being drawn."""
        if self._console is not None:
            self._clear_line()
            self._console.write(f"{self._prefix}{text}\n")
            self._console.flush()
            self._draw(force=True)

    def position(self) -> str:
        """Where the job is, for an error message: "stage 2 of 6 (oracle ...), building finetune"."""
        if self._index < 0:
            return "preparing the run"
        text = f"stage {self._index + 1} of {len(self._stages)} ({self._stages[self._index]})"
        return f"{text}, building {self._building[-1]}" if self._building else text

    # ------------------------------------------------------------------ reports from below
    @contextmanager
    def artifact(self, kind: str, key: str) -> Iterator[None]:
        """The artifact store fetches or builds one artifact. One this job already had (the target, asked for again
        by a method) is not news; a new top-level one of a method's kinds closes the current method stage."""
        known = (kind, key) in self._seen
        top_level = not self._building
        depth = len(self._building)
        if not known:
            self._requested += 1
        try:
            yield
        except BaseException as error:  # the position with what was being built, before it is forgotten
            remember_failure_context(error, stage=self.position())
            raise
        finally:
            self._seen.add((kind, key))
            del self._building[depth:]
            if not known and top_level and self._method_stages and kind in METHOD_ARTIFACT_KINDS:
                self._end()
                self._begin(self._method_stages.pop(0))

    def building(self, kind: str) -> None:
        self._building.append(kind)
        self._built.append(kind)
        self._training = None
        self._draw(force=True)

    def training_step(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self._training is None or done <= 1:
            self._training = (done, total, now)
        else:
            self._training = (done, total, self._training[2])
        self._draw()

    # ------------------------------------------------------------------ drawing
    def _begin(self, title: str | None) -> None:
        self._index += 1
        if title is not None:
            self._stages[self._index] = title
        self._stage_started = time.perf_counter()
        self._built, self._requested, self._building, self._training = [], 0, [], None
        self._draw(force=True)

    def _end(self, failed: bool = False) -> None:
        elapsed = time.perf_counter() - self._stage_started
        if failed:  # the error itself is reported by the caller; the stage line must not read "done"
            outcome = f"failed after {_seconds(elapsed)}"
        elif self._requested and not self._built:
            outcome = "reused from the cache"
        else:
            outcome = f"done in {_seconds(elapsed)}"
            if self._built:
                outcome += f" (built {', '.join(dict.fromkeys(self._built))})"
        if self._console is not None:
            self._clear_line()
            self._console.write(f"{self._heading()}: {outcome}\n")
            self._console.flush()
        self._stage_started = 0.0

    def _heading(self) -> str:
        return f"{self._prefix}stage {self._index + 1} of {len(self._stages)}: {self._stages[self._index]}"

    def _status(self) -> str:
        parts = [self._heading()]
        if self._building:
            parts.append(f"building {self._building[-1]}")
        if self._training is not None:
            done, total, first_step = self._training
            parts.append(f"step {done}/{total}")
            if done > 1:
                per_step = (time.perf_counter() - first_step) / (done - 1)
                parts.append(f"about {_seconds(per_step * (total - done))} left")
        return " · ".join(parts)

    def _draw(self, force: bool = False) -> None:
        if not self._in_place or self._index < 0:
            return  # not a terminal: one line per stage, written when it ends
        now = time.perf_counter()
        if not force and now - self._last_draw < _REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        self._console.write(f"\r{self._status()}\x1b[K")
        self._console.flush()

    def _clear_line(self) -> None:
        if self._in_place:
            self._console.write("\r\x1b[K")


class _WarningsToConsole(logging.Handler):
    """While library output goes to the log file, msa_bench's warnings and everyone's errors still reach the person
    at the console."""

    def __init__(self, display: RunProgress) -> None:
        super().__init__(level=logging.WARNING)
        self._display = display

    def emit(self, record: logging.LogRecord) -> None:
        # A library's warnings are library output (the log file has them); its errors and our warnings are news.
        ours = record.name == "msa_bench" or record.name.startswith("msa_bench.")
        if ours or record.levelno >= logging.ERROR:
            self._display.message(f"{record.levelname.lower()}: {record.getMessage()}")


def run_log_file(output_dir: Path) -> Path:
    """The job's log file: the one Hydra's job logging writes in the run directory (<run dir>/msa_bench.log), or a
    file of that name there when no handler writes one (the runner called from Python)."""
    output_dir = Path(output_dir).resolve()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == output_dir:
            return Path(handler.baseFilename)
    return output_dir / "msa_bench.log"


def _is_console_handler(handler: logging.Handler) -> bool:
    consoles = {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}
    return type(handler) is logging.StreamHandler and handler.stream in consoles


@contextmanager
def quiet_console_logging(mode: ProgressMode) -> Iterator[None]:
    """Unless verbose, keep INFO records off the console for a whole job (the log file still gets them): the stage
    lines replace them. Warnings and errors still show."""
    handlers = [handler for handler in logging.getLogger().handlers if _is_console_handler(handler)]
    levels = [handler.level for handler in handlers]
    if ProgressMode.parse(mode) is not ProgressMode.verbose:
        for handler in handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


@contextmanager
def _library_output_to(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr (Python's and the file descriptors', so subprocesses too) to
    `log_path`; yields a stream to the real console. Console log handlers are detached meanwhile: the log file
    already gets their records from Hydra's file handler."""
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    sys.stdout.flush()
    sys.stderr.flush()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    console = open(os.dup(saved_fds[0]), "w", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
    root = logging.getLogger()
    console_handlers = [handler for handler in root.handlers if _is_console_handler(handler)]
    bars_were_on = transformers_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    for handler in console_handlers:
        root.removeHandler(handler)
    # Loading bars would fill the log with carriage returns; their absence loses nothing.
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        yield console
    finally:
        log.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        log.close()
        console.close()
        for handler in console_handlers:
            root.addHandler(handler)
        if bars_were_on[0]:
            transformers_logging.enable_progress_bar()
        if bars_were_on[1]:
            hub_utils.enable_progress_bars()


@contextmanager
def run_progress(
    mode: ProgressMode, stages: Sequence[str], output_dir: Path, label: str = ""
) -> Iterator[RunProgress]:
    """The display of one job, active for the duration of the `with` block (see the module docstring)."""
    global _active
    previous = _active
    mode = ProgressMode.parse(mode)
    if mode is ProgressMode.verbose:
        # Library bars and logs share the console: stage lines are written when a stage ends, never redrawn.
        _active = display = RunProgress(stages, console=sys.stdout, label=label, in_place=False)
        try:
            yield display
        finally:
            _active = previous
        return
    with _library_output_to(run_log_file(output_dir)) as console:
        shown = console if mode is ProgressMode.auto else None
        _active = display = RunProgress(stages, console=shown, label=label)
        warnings_handler = _WarningsToConsole(display)
        logging.getLogger().addHandler(warnings_handler)
        try:
            yield display
        finally:
            logging.getLogger().removeHandler(warnings_handler)
            _active = previous


def start_run_progress(
    mode: ProgressMode, stages: Sequence[str], output_dir: Path, label: str = ""
) -> RunProgress:
    """`run_progress` for code that cannot wrap the run in a `with` block: call `.close()` on the result when done
    (also after an error: it gives the console back)."""
    stack = ExitStack()
    display = stack.enter_context(run_progress(mode, stages, output_dir, label))
    display._close = stack.close
    return display


def job_label() -> str:
    """`#3` for job 3 of a Hydra multirun (its lines are told apart from the other jobs'), else nothing."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra job
        return ""
    return f"#{hydra_cfg.job.num}" if hydra_cfg.mode == RunMode.MULTIRUN else ""
