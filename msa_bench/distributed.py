"""Several processes of one run (torchrun, accelerate launch, or one Slurm task per GPU) in lockstep.

Every rank runs the same runner. Rank 0 decides and writes; the others follow (msa_bench/pipeline/lockstep.py):
- a training stage (a build that calls `run_training`) runs on every rank, so that `Trainer` trains with DDP, FSDP or
  DeepSpeed; only rank 0 writes the artifact;
- every other stage (the world, the tokenizer, arithmetic, evaluations) builds on rank 0 while the others wait;
- results.json, per_item.json, W&B, the table and the console display are rank 0's alone.

A single process (no launcher variables, or a world of one) never initialises torch.distributed and behaves exactly
as before. The rank comes from an initialised process group, else from the launcher's variables: torchrun and
accelerate set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; an `srun` step of several tasks (the submitit
launcher with tasks_per_node > 1) sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_NTASKS_PER_NODE, and
`init_process_group` then exports the torchrun variables through submitit's own helper.

Rank 0 may work alone for hours (evaluating an 8B model, say) while the others wait, so the wait is bounded by
`dist_timeout_minutes` (12 h by default), not by torch's 30 minutes. Rank 0's decisions travel on a gloo group even
when training uses NCCL: a rank that waits on it does not hold a CUDA stream or trip NCCL's watchdog.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from msa_bench.config.schema import TrainRecipe
from msa_bench.errors import ConfigError, DistributedError

log = logging.getLogger("msa_bench.distributed")

_control_group = None  # the gloo group that carries rank 0's decisions (the default group on CPU)
_main_only_depth = 0  # > 0 while rank 0 runs a stage alone: no collective may start then


@dataclasses.dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process sits among the processes its launcher started."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # torchrun (also accelerate launch) | slurm | none


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError as error:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from error


def launch_environment() -> LaunchEnvironment:
    """The launcher's view of this process, from the environment (torchrun's variables first, then Slurm's)."""
    if "WORLD_SIZE" in os.environ:
        world = _int("WORLD_SIZE", 1)
        return LaunchEnvironment(
            rank=_int("RANK", 0),
            world_size=world,
            local_rank=_int("LOCAL_RANK", 0),
            local_world_size=_int("LOCAL_WORLD_SIZE", world),
            launcher="torchrun",
        )
    # Only inside an srun step of several tasks: a batch script itself also sees SLURM_NTASKS but is one process.
    if "SLURM_STEP_ID" in os.environ and _int("SLURM_NTASKS", 1) > 1:
        world = _int("SLURM_NTASKS", 1)
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", str(world)).split("(")[0].split(",")[0]
        return LaunchEnvironment(
            rank=_int("SLURM_PROCID", 0),
            world_size=world,
            local_rank=_int("SLURM_LOCALID", 0),
            local_world_size=int(per_node) if per_node.isdigit() else world,
            launcher="slurm",
        )
    return LaunchEnvironment()


def _initialised():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    dist = _initialised()
    return dist.get_world_size() if dist is not None else launch_environment().world_size


def rank() -> int:
    dist = _initialised()
    return dist.get_rank() if dist is not None else launch_environment().rank


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    return rank() == 0


def in_lockstep() -> bool:
    """Whether every rank is here now: several processes, and rank 0 is not running a stage alone."""
    return is_distributed() and _main_only_depth == 0


@contextmanager
def main_process_alone() -> Iterator[None]:
    """Rank 0 runs the block alone while the other ranks wait for its outcome: no collective inside."""
    global _main_only_depth
    _main_only_depth += 1
    try:
        yield
    finally:
        _main_only_depth -= 1


def check_launch(cfg, device: str) -> None:
    """Refuse, before any stage, a launch the run cannot split: more processes on a node than CUDA devices, or a
    training batch that the processes cannot share evenly (recipe.batch_size is the global batch: each of N
    processes trains on batch_size / N, so N processes take the same optimizer steps as one)."""
    env = launch_environment()
    if env.world_size <= 1:
        return
    if device.startswith("cuda"):
        import torch

        visible = torch.cuda.device_count()
        if env.local_world_size > visible:
            raise DistributedError(
                f"{env.launcher} started {env.local_world_size} processes on this node but only {visible} CUDA "
                f"device(s) are visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                f"start at most {visible} (torchrun --nproc_per_node {visible}), or set device=cpu"
            )
    problems = [
        f"{path}.batch_size={recipe.batch_size} cannot be split across {env.world_size} processes (batch_size is "
        f"the global batch, each process trains on batch_size / {env.world_size}): set {path}.batch_size to a "
        f"multiple of {env.world_size}, or start a number of processes that divides it"
        for path, recipe in training_recipes(cfg)
        if recipe.batch_size % env.world_size
    ]
    if problems:
        raise ConfigError(*problems)


def training_recipes(node, path: str = "") -> list[tuple[str, TrainRecipe]]:
    """Every TrainRecipe in a typed config, with its dotted key (e.g. `benchmark.target_recipe`)."""
    if isinstance(node, TrainRecipe):
        return [(path, node)]
    if not dataclasses.is_dataclass(node) or isinstance(node, type):
        return []
    found: list[tuple[str, TrainRecipe]] = []
    for item in dataclasses.fields(node):
        found += training_recipes(getattr(node, item.name), f"{path}.{item.name}" if path else item.name)
    return found


def per_device_batch_size(global_batch_size: int) -> int:
    """A recipe's batch on this process: the global batch shared by every rank (see `check_launch`)."""
    processes = world_size()
    if global_batch_size % processes:
        raise ConfigError(
            f"batch_size={global_batch_size} cannot be split across {processes} processes: use a multiple of "
            f"{processes}"
        )
    return global_batch_size // processes


def init_process_group(device: str, timeout_minutes: float) -> None:
    """Join the other ranks (once per process; nothing at all for a single process): gloo on CPU, NCCL on CUDA, and
    a gloo group for rank 0's decisions; every wait is bounded by `timeout_minutes`."""
    global _control_group
    env = launch_environment()
    if env.world_size <= 1 or _control_group is not None:
        return
    import torch
    import torch.distributed as dist

    if env.launcher == "slurm":
        # submitit's helper sets MASTER_ADDR/MASTER_PORT from the job's first node, and RANK, WORLD_SIZE, ...
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    timeout = timedelta(minutes=timeout_minutes)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        # NCCL collectives are the training's all-reduces: every rank is in them at once, so torch's own timeout is
        # enough and a hung one surfaces in minutes. The long waits (rank 0 evaluating alone) are on the gloo group.
        dist.init_process_group(backend=backend, **({} if backend == "nccl" else {"timeout": timeout}))
    _control_group = (
        dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    )
    log.info(
        "rank %d of %d (local rank %d, %s, %s); waits time out after %s min (dist_timeout_minutes)",
        env.rank,
        env.world_size,
        env.local_rank,
        env.launcher,
        backend,
        timeout_minutes,
    )


def _require_group():
    if _control_group is None:
        raise DistributedError(
            "several processes were launched but torch.distributed is not initialised: call "
            "msa_bench.distributed.init_process_group first"
        )
    return _control_group


def barrier() -> None:
    """Wait until every rank is here (nothing for a single process)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    dist.barrier(group=_require_group())


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (any picklable value); a single process gets its own back."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_require_group())
    return box[0]


def first_problem_of_any_rank(problem: str | None) -> str | None:
    """Every rank's `problem` (None: none) gathered; the first one found, named with its rank, on every rank. A check
    that one rank fails alone (its own free memory) must stop every rank, not leave the others in a collective that
    the failing rank never joins. Only `problem` when not in lockstep."""
    if not in_lockstep():
        return problem
    import torch.distributed as dist

    problems = [None] * world_size()
    dist.all_gather_object(problems, problem, group=_require_group())
    for source, found in enumerate(problems):
        if found is not None:
            return found if source == rank() else f"on rank {source}: {found}"
    return None


def sum_over_ranks(value: int) -> int:
    """The sum of `value` over the ranks (e.g. the tokens each trained on); `value` itself when not in lockstep."""
    if not in_lockstep():
        return value
    import torch.distributed as dist

    values = [0] * world_size()
    dist.all_gather_object(values, int(value), group=_require_group())
    return sum(values)


def require_same_on_all_ranks(value, what: str) -> None:
    """Raise DistributedError on a rank whose `value` differs from rank 0's (a cache key, a data digest): ranks that
    disagree would train on different data or wait for different artifacts. Nothing when not in lockstep."""
    if not in_lockstep():
        return
    leader = broadcast_object(value)
    if leader != value:
        raise DistributedError(
            f"rank {rank()} disagrees with rank 0 on {what}: {value!r} here, {leader!r} on rank 0. Every rank must "
            "see the same configuration, data and cache (paths.cache_dir on a filesystem all ranks share)"
        )
