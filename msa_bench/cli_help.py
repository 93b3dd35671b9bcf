"""`msa-bench --help`: the config groups a user chooses from (read from conf/), the top-level keys, the subcommands.

Hydra's generic page would list the internal `schema/*` groups and Hydra's own, and never mention `report` or
`parity`; this page is built from the YAML files under conf/, so a new option shows up without editing it. Hydra's
own page stays reachable with `msa-bench --hydra-help`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from omegaconf import OmegaConf

# Groups under conf/hydra/ that this project provides (the rest of Hydra's groups are Hydra's own).
_PROJECT_HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
_LINE_WIDTH = 110

_USAGE = """\
msa-bench: LLM unlearning benchmark runs (Model State Arithmetic and baselines), configured with Hydra.

Usage:
  msa-bench [GROUP=OPTION ...] [KEY=VALUE ...]   one run; with no arguments the embedded default
                                                 (a tiny Llama trained here, a generated TOFU-style benchmark, MSA)
  msa-bench -m GROUP=A,B KEY=X,Y ...             a sweep: one job per combination (multirun/<date>/<time>/)
  msa-bench report DIR [DIR ...]                 paper-style tables and plots from finished runs' results.json
                                                 (msa-bench report --help)
  msa-bench parity EVAL_JSON                     recompute an open-unlearning TOFU_EVAL.json / MUSE_EVAL.json
                                                 with msa_bench's metric code (msa-bench parity --help)
  msa-bench cache ls|verify|prune                list, rehash or clean the stage cache (msa-bench cache --help)
"""

_KEYS = """\
Top-level keys (KEY=VALUE):
  seed=0                    the run's seed (data order, initialisation, subsets)
  device=auto               auto | cpu | cuda (auto picks cuda when available)
  num_threads=2             torch CPU threads (use 1 per job when running jobs in parallel)
  progress=auto             auto: one line per stage, library output to the run's msa_bench.log;
                            verbose: everything on the console (Trainer logs, progress bars); off: only the table
  hydra.run.dir=DIR         the run directory: results.json, per_item.json, msa_bench.log (default outputs/...)
  paths.cache_dir=DIR       the stage cache shared by runs (or the MSA_BENCH_CACHE environment variable)
  cache.verify=false        true: rehash every cached file on each read (default: sizes always, hashes once)
  overwrite=false           true: a run may replace a folder's finished results of another configuration
  model.trust_remote_code=false  true: run a pretrained model folder's own Python code (auto_map); read it first
  logger.require_online=false    true: a failed online wandb.init stops the run instead of logging locally
  GROUP.KEY=VALUE           any key of a chosen option, e.g. method.alpha=2 or benchmark.forget_split=forget05
"""

_EXAMPLES = """\
Examples:
  msa-bench experiment=smoke logger=none                 a one-minute miniature of the default
  msa-bench checkpoint=base method.beta=0                MSA from the base checkpoint, forget-only
  msa-bench -m method=msa,npo,grad_diff seed=0,1,2       a sweep of 9 jobs
  msa-bench report multirun/                             the sweep's tables
  msa-bench --cfg job method=npo                         print the composed config without running

More: msa-bench --hydra-help (Hydra's own flags), README.md and docs/.
"""


# Groups the configuration picks from other choices rather than the user: conf/config.yaml's defaults select
# `recipe: <experiment>/<method>` (a paper experiment's recipe for the method on the command line).
_CHOSEN_FOR_YOU = {
    "recipe": "picked from experiment= and method= (conf/recipe/paper/<experiment>/<method>.yaml); "
    "override single keys, e.g. method.recipe.learning_rate=3e-5",
}


def config_group_options(config_dir: Path) -> dict[str, list[str]]:
    """Each user-facing config group under `config_dir` and its options (nested folders as `folder/name`)."""
    groups: dict[str, list[str]] = {}
    for group_dir in sorted(path for path in config_dir.iterdir() if path.is_dir()):
        if group_dir.name == "hydra":
            continue  # conf/hydra/default.yaml is the project's Hydra settings; its two choosable groups follow
        if group_dir.name in _CHOSEN_FOR_YOU:
            continue  # listed once, with how it is chosen, by help_text
        groups[group_dir.name] = _options(group_dir)
    for group in _PROJECT_HYDRA_GROUPS:
        if (config_dir / group).is_dir():
            groups[group] = _options(config_dir / group)
    return groups


def _options(group_dir: Path) -> list[str]:
    return sorted(
        path.relative_to(group_dir).with_suffix("").as_posix() for path in group_dir.rglob("*.yaml")
    )


def default_choices(config_dir: Path) -> dict[str, str | None]:
    """The option each group takes when none is given: the `group: option` entries of conf/config.yaml's defaults."""
    defaults = OmegaConf.to_container(OmegaConf.load(config_dir / "config.yaml"))["defaults"]
    choices: dict[str, str | None] = {}
    for entry in defaults:
        if isinstance(entry, dict):
            for group, choice in entry.items():
                choices[group.removeprefix("optional ")] = choice
    return choices


def help_text(config_dir: Path) -> str:
    defaults = default_choices(config_dir)
    groups = config_group_options(config_dir)
    width = max(len(group) for group in groups) + 2
    lines = ["Config groups (GROUP=OPTION; * marks the default):"]
    for group, options in groups.items():
        marked = [f"{option}*" if defaults.get(group) == option else option for option in options]
        label = f"  {group + ':':<{width}}"
        lines.append(
            textwrap.fill(
                ", ".join(marked), _LINE_WIDTH, initial_indent=label, subsequent_indent=" " * len(label)
            )
        )
    for group, how in _CHOSEN_FOR_YOU.items():
        if (config_dir / group).is_dir():
            label = f"  {group + ':':<{width}}"
            lines.append(
                textwrap.fill(how, _LINE_WIDTH, initial_indent=label, subsequent_indent=" " * len(label))
            )
    return "\n".join([_USAGE, *lines, "", _KEYS, _EXAMPLES])
