"""Sweeps (`msa-bench -m ...`): per-job status files, failure isolation, skip-if-done, and the sweep summary.

- `status.py`: status.json in every run directory, the config hash, finding a job that already completed.
- `jobs.py`: the wrapper a multirun job runs in; it records a failure instead of raising, so the other jobs go on.
- `summary.py`: sweep_summary.json / sweep_summary.md from the jobs' status files.
- `run_folder.py`: the Hydra callback that refuses a single run into a folder holding another config's results
  (`overwrite=true` replaces them) and marks a sweep's dead `running` jobs `crashed` at its start.
- `callbacks.py`: the Hydra callback (registered in conf/hydra/default.yaml) that writes the summary at the end of a
  multirun, with any launcher.
"""

from __future__ import annotations

import warnings

# conf/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml deliberately carry the plugins' own option names,
# so `hydra/launcher=joblib` picks msa_bench's settings (one job per core, for example). Hydra then validates them
# against the plugin's schema of the same name, which is what we want, but warns that this matching is deprecated.
_LAUNCHER_OPTIONS = "joblib|submitit_local|submitit_slurm"


_silenced = False


def silence_launcher_schema_warning() -> None:
    """Hide Hydra's deprecation warning about our launcher YAMLs sharing the plugins' schema names (only those)."""
    global _silenced
    if _silenced:
        return
    warnings.filterwarnings(
        "ignore",
        message=rf"\s*'hydra/launcher/({_LAUNCHER_OPTIONS})' is validated against ConfigStore schema",
        category=UserWarning,
    )
    _silenced = True


# Also on import: a joblib or submitit worker composes the job's config before it imports msa_bench.cli, but after
# it has unpickled the sweep callback (msa_bench.sweeps.callbacks), which imports this package.
silence_launcher_schema_warning()
