"""Every error msa_bench raises on purpose, in one hierarchy.

The CLI catches `MSABenchError` and prints its message as one line (exit code 2): these are the errors a user can fix
by changing a config value, a path or the data, and each message names the key, path or value and says what to do.
Anything else is a bug and keeps its traceback.

Each class also derives from the built-in exception it replaced (ValueError, FileNotFoundError, RuntimeError), so code
and tests that caught the built-in keep working. Raise the most specific class; wrap a lower-level error with
`raise ... from error` so that the cause stays attached, never by re-creating an error from `str(error)`.
"""

from __future__ import annotations

import signal


class MSABenchError(Exception):
    """The base of every error msa_bench raises deliberately; the message says what to change."""


class ConfigError(MSABenchError, ValueError):
    """A config value is invalid; the message names the dotted key and what to do.

    validate_config reports every problem of a config at once: one message per problem, each naming its key, as the
    exception's args (so the error survives pickling, e.g. a sweep job run by joblib or submitit)."""

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(str(problem) for problem in self.args)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class DataError(MSABenchError, FileNotFoundError):
    """Data a run needs is missing or malformed; the message names the file or folder."""


class MalformedDataError(DataError, ValueError):
    """A data file is there but cannot be parsed or lacks a field; the message names the file, the line (or record)
    and the field."""


class ModelSourceError(DataError):
    """A model (or one of its revisions) cannot be found locally or on the hub."""


class StageError(MSABenchError, ValueError):
    """A configuration asks for something the pipeline cannot provide (the message says what to do)."""


class BenchmarkError(StageError):
    """The benchmark cannot provide what the configuration asks for; the message says what to do."""


class ArtifactError(MSABenchError, RuntimeError):
    """A cached artifact cannot be read, written or trusted; the message names the entry."""


class StateArithmeticError(MSABenchError, ValueError):
    """Model states cannot be combined (missing tensors, shape or dtype mismatch, different tokenizers)."""


class CheckpointNotFoundError(StateArithmeticError, FileNotFoundError):
    """A model-state folder, or the weights inside it, does not exist."""


class DivergenceError(MSABenchError, RuntimeError):
    """Training produced a non-finite or out-of-bounds loss; nothing was saved."""


class NonFiniteWeightsError(DivergenceError):
    """A model's weights hold NaN or inf (after training, a dtype conversion or state arithmetic); nothing was saved.
    The message names the first bad tensor and its counts of NaN and inf values."""


class MetricError(MSABenchError, RuntimeError):
    """A requested metric cannot be computed; the message says why (never a placeholder value)."""


class MetricUnavailableError(MetricError):
    """The evaluation did not produce a requested metric."""


class NonFiniteMetricError(MetricError):
    """A metric came out NaN or inf where its definition gives a number; the message names the metric and model."""


class MetricUndefinedError(MetricError, ValueError):
    """A metric is undefined by its own definition for these inputs (e.g. privleak against a reference AUC of 1).
    The evaluation records it as null, with this message as the reason in results.json's metric_provenance."""


class JudgeError(MetricError):
    """An LLM judge could not be reached or gave an answer that cannot be parsed."""


class LmEvalTaskError(MetricError):
    """An lm-eval task cannot be loaded or run offline."""


class AttackError(StageError):
    """A robustness attack cannot be applied to a model (a tensor the quantization library cannot group, a library that
    needs CUDA on a CPU machine, relearning data that overlap the evaluated items); the message names the attack."""


class ReportError(MSABenchError, ValueError):
    """`msa-bench report` cannot read or combine its inputs."""


class PaperReferenceError(ReportError):
    """The paper-reference YAML is malformed."""


class ParityError(MSABenchError, ValueError):
    """An open-unlearning log cannot be read or recomputed."""


class DataSourceError(DataError):
    """Benchmark data cannot be found or fetched; the message names what was looked for and where."""


class MuseDataNotFoundError(DataError):
    """A file a MUSE run reads is missing; the message names every full path looked for and how to fix it."""


class RunFolderInUseError(MSABenchError, FileExistsError):
    """A run folder holds the finished results of another configuration; the message says how to keep or replace them."""


class DistributedError(MSABenchError, RuntimeError):
    """Processes launched together cannot run in lockstep: more processes than devices, ranks that disagree, or a
    stage that failed on rank 0 while the others waited for it."""


class RankZeroFailedError(DistributedError):
    """A stage failed on rank 0, which told the other ranks; they stop that job too (rank 0 has the message)."""


class RunLoggerError(MSABenchError, RuntimeError):
    """The run logger (W&B) cannot start and the configuration forbids the local fallback."""


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived: raised in the main thread so that every `finally` runs (the W&B run closes,
    temporaries are removed) before msa-bench exits with 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that `except Exception` blocks on the way do not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ResourceError(MSABenchError, OSError):
    """The machine lacks what a stage needs (free disk space, accelerator memory); the message gives what is needed,
    what there is, and what to change."""


class InsufficientMemoryError(ResourceError):
    """A stage's estimated peak memory exceeds what the device has free (msa_bench/pipeline/memory_preflight.py);
    raised before anything is loaded, with both figures and the options that would make it fit."""
