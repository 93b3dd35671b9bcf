"""Issue 12's eight reproductions, run again as written against the smoke experiment, each with what it must give now.

Every case runs the real `msa-bench` command (or, for loading and the simulated machine failures, the real functions
behind it) in a scratch folder with its own cache, and checks the outcome: a clear one-line error, or a correct
rebuild; never a "done" run with wrong or NaN numbers, and never an overwritten result. It prints one line per check
and exits 1 if any check fails.

    python scripts/reproduce_reliability.py                # all cases, about 6 minutes on 2 CPU cores
    python scripts/reproduce_reliability.py --only 1,6     # some of them
    python scripts/reproduce_reliability.py --keep         # keep the scratch folder (printed) for inspection

Case 4 needs real TOFU (MSA_BENCH_DATA, or ../shared/data next to the checkout); it is skipped without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "logger=none"]
_failures: list[str] = []


def check(condition: bool, what: str, detail: str = "") -> None:
    print(
        f"  {'ok  ' if condition else 'FAIL'} {what}" + (f"  [{detail}]" if detail and not condition else "")
    )
    if not condition:
        _failures.append(what)


class Scratch:
    """A scratch folder with its own cache; runs `msa-bench` there with the offline environment of CI."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cache = base / "cache"
        self.env = {
            **os.environ,
            "MSA_BENCH_CACHE": str(self.cache),
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "msa_bench.cli", *args]

    def run(
        self, *args: str, env: dict | None = None, python: str | None = None
    ) -> subprocess.CompletedProcess:
        """`msa-bench args...`, or `python -c <python>` with args as sys.argv (to simulate a machine failure)."""
        argv = [sys.executable, "-c", python, *args] if python else self.command(*args)
        started = time.perf_counter()
        done = subprocess.run(
            argv, cwd=self.base, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=900
        )
        done.seconds = time.perf_counter() - started
        return done

    def results(self, run_dir: Path) -> dict:
        return json.loads((run_dir / "results.json").read_text())


def last_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("msa-bench")]
    return lines[-1] if lines else (done.stderr.strip().splitlines() or [""])[-1]


def show(done: subprocess.CompletedProcess) -> None:
    print(
        f"    exit {done.returncode} after {done.seconds:.0f} s: {textwrap.shorten(last_error_line(done), 400)}"
    )


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def finite_json(path: Path) -> bool:
    def refuse(literal: str):
        raise ValueError(literal)

    try:
        json.loads(path.read_text(), parse_constant=refuse)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- the cases
def case_1_corrupt_cache(s: Scratch) -> None:
    print(
        "1. a corrupt cached target (4 KiB of 0xFF, then a truncated file) is found, moved aside and rebuilt"
    )
    first = s.base / "run_default"
    done = s.run(*SMOKE, f"hydra.run.dir={first}")
    check(done.returncode == 0, "the first smoke run finishes", done.stderr[-2000:])
    if done.returncode != 0:
        return
    weights = Path(s.results(first)["artifacts"]["target"]) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xff" * 4096
    weights.write_bytes(bytes(data))

    corrupt = s.base / "run_alpha3"
    done = s.run(*SMOKE, "method.alpha=3", f"hydra.run.dir={corrupt}")
    log = (corrupt / "msa_bench.log").read_text() if (corrupt / "msa_bench.log").exists() else ""
    show(done)
    check(done.returncode == 0, "method.alpha=3 after the corruption finishes", done.stderr[-2000:])
    check(
        "is corrupt" in log and "moved it to" in log, "the log names the corrupt entry and where it was moved"
    )
    check(finite_json(corrupt / "results.json"), "results.json is strict JSON (no NaN)")
    quarantined = list((s.cache / ".quarantine").glob("finetune-*"))
    check(len(quarantined) == 1, "the corrupt copy is kept under .quarantine, not deleted")

    reference = Scratch(s.base / "clean")
    reference.base.mkdir()
    done = reference.run(*SMOKE, "method.alpha=3", f"hydra.run.dir={reference.base / 'run'}")
    same = done.returncode == 0 and (
        s.results(corrupt)["metrics"] == reference.results(reference.base / "run")["metrics"]
    )
    check(same, "its metrics equal a clean cache's alpha=3 run exactly")

    weights.write_bytes(weights.read_bytes()[: len(data) // 3])
    truncated = s.base / "run_alpha3_truncated"
    done = s.run(*SMOKE, "method.alpha=3", f"hydra.run.dir={truncated}")
    log = (truncated / "msa_bench.log").read_text() if (truncated / "msa_bench.log").exists() else ""
    check(done.returncode == 0 and "size" in log and "is corrupt" in log, "a truncated target is rebuilt too")
    check(
        done.returncode == 0 and s.results(truncated)["metrics"] == s.results(corrupt)["metrics"],
        "with the same metrics",
    )


def case_2_plus_key_typos(s: Scratch) -> None:
    print("2. `+key` overrides that no schema declares are refused, naming the key and the nearest names")
    for override in ("+method.alhpa=1", "+benchmark.target_recipe.epoch=1", "+method.lora_r=8"):
        run_dir = s.base / f"typo_{override.strip('+').replace('.', '_').split('=')[0]}"
        done = s.run(*SMOKE, override, f"hydra.run.dir={run_dir}")
        show(done)
        key = override.strip("+").split("=")[0]
        check(done.returncode == 2 and key in done.stderr, f"{override}: exit 2, names {key}")
        check(not run_dir.exists(), f"{override}: no run folder is left")


_LOAD = """
import sys
from pathlib import Path
from msa_bench.models.build import load_model
try:
    load_model(Path(sys.argv[1]))
except Exception as error:
    print(f"msa-bench: error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(2)
"""

_TINY_FOLDER = """
import sys, json, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
folder = Path(sys.argv[1]); kind = sys.argv[2]
config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
model = LlamaForCausalLM(config)
if kind == "remote_code":
    model.save_pretrained(folder)
    settings = json.loads((folder / "config.json").read_text())
    settings["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    settings["model_type"] = "evil_architecture"  # a class transformers does not have: only the repository's code
    (folder / "config.json").write_text(json.dumps(settings))
    (folder / "modeling_evil.py").write_text("open(__file__ + '.ran', 'w').write('ran')\\n")
else:
    model.save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "adapter.safetensors")  # a stray safetensors; no model weights
    sentinel = folder / "pickle_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    torch.save({"payload": Payload()}, folder / "pytorch_model.bin")
"""


def case_3_safe_loading(s: Scratch) -> None:
    print("3. remote code never runs without model.trust_remote_code=true; pickle weights are refused")
    remote = s.base / "remote_code_model"
    s.run(str(remote), "remote_code", python=_TINY_FOLDER)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(remote)], input="y\n", capture_output=True, text=True, env=s.env
    )
    done.seconds = 0.0
    show(done)
    check(
        done.returncode == 2
        and "trust_remote_code" in done.stderr
        and "[y/N]" not in done.stdout + done.stderr,
        "an auto_map folder is refused with the key to set, never a prompt (stdin held 'y')",
    )
    check(not (remote / "modeling_evil.py.ran").exists(), "its Python did not run")

    pickled = s.base / "pickle_model"
    s.run(str(pickled), "pickle", python=_TINY_FOLDER)
    done = s.run(str(pickled), python=_LOAD)
    show(done)
    check(
        done.returncode == 2 and "pytorch_model.bin" in done.stderr,
        "a pickle folder with a stray safetensors",
    )
    check(not (pickled / "pickle_ran").exists(), "the pickle was never opened")


def _tofu_dir() -> Path | None:
    candidates = [os.environ.get("MSA_BENCH_DATA"), str(ROOT.parent / "shared" / "data")]
    for root in filter(None, candidates):
        if (Path(root) / "tofu" / "full.jsonl").is_file():
            return Path(root) / "tofu"
    return None


def case_4_truncated_data(s: Scratch) -> None:
    print("4. a truncated TOFU split is named (file and line) before any training")
    source = _tofu_dir()
    if source is None:
        print("  skip (no TOFU data: set MSA_BENCH_DATA)")
        return
    for name in ("forget01.jsonl", "full.jsonl"):
        copy = s.base / f"tofu_{name.split('.')[0]}"
        shutil.copytree(source, copy)
        text = (copy / name).read_bytes()
        (copy / name).write_bytes(text[: len(text) // 2])
        done = s.run(
            *SMOKE, "benchmark=tofu", f"benchmark.data_dir={copy}", f"hydra.run.dir={s.base / 'tofu_run'}"
        )
        show(done)
        check(
            done.returncode == 2 and f"{name} line" in done.stderr, f"truncated {name}: exit 2, file and line"
        )
        check(not (s.cache / "finetune").exists(), f"truncated {name}: nothing was trained")


_FULL_DISK = """
import collections, shutil, sys
free = int(sys.argv.pop(1))
Usage = collections.namedtuple("Usage", "total used free")
shutil.disk_usage = lambda path: Usage(10**12, 10**12 - free, free)
sys.argv[0] = "msa-bench"
from msa_bench.cli import main
main()
"""

_ENOSPC_PER_ITEM = """
import errno, pathlib, sys
original = pathlib.Path.write_text
def write_text(self, *args, **kwargs):
    if self.name.startswith(".per_item.json.tmp"):
        original(self, "{partial", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return original(self, *args, **kwargs)
pathlib.Path.write_text = write_text
sys.argv[0] = "msa-bench"
from msa_bench.cli import main
main()
"""


def case_5_disk(s: Scratch) -> None:
    print(
        "5. a full disk: refused before training with required and free bytes; a full output disk mid-write"
    )
    run_dir = s.base / "full_disk"
    done = s.run("1000", *SMOKE, "seed=5", f"hydra.run.dir={run_dir}", python=_FULL_DISK)
    show(done)
    check(
        done.returncode == 2 and "free" in done.stderr and "needs" in done.stderr,
        "one line: needs / free / path",
    )
    check(not (s.cache / "history").exists(), "nothing was trained")

    run_dir = s.base / "full_output_disk"
    done = s.run(*SMOKE, f"hydra.run.dir={run_dir}", python=_ENOSPC_PER_ITEM)
    show(done)
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
    check(done.returncode == 2 and "no space left" in done.stderr, "one line naming the full disk")
    check(not list(run_dir.glob(".*.tmp-*")), "no temporary file is left")
    check(status.get("state") == "failed", "status.json says failed", str(status.get("state")))
    check("Traceback" not in done.stderr, "no traceback (nor a secondary error) on the console")


def case_6_no_overwrite(s: Scratch) -> None:
    print("6. a finished run of another configuration is never overwritten silently")
    run_dir = s.base / "finished"
    done = s.run(*SMOKE, f"hydra.run.dir={run_dir}")
    check(done.returncode == 0, "a smoke run finishes")
    before = folder_digest(run_dir)
    done = s.run(*SMOKE, f"hydra.run.dir={run_dir}", "method.alpha=2")
    show(done)
    check(done.returncode == 2 and "overwrite=true" in done.stderr, "method.alpha=2 into it is refused")
    check(folder_digest(run_dir) == before, "the folder is byte-identical, .hydra/ included")
    done = s.run(*SMOKE, f"hydra.run.dir={run_dir}", "method.alpha=2", "overwrite=true")
    check(
        done.returncode == 0 and s.results(run_dir)["config"]["method"]["alpha"] == 2,
        "overwrite=true replaces",
    )


def _start_and_signal(s: Scratch, run_dir: Path, seed: int, sig: int, wait_for: Callable[[], bool]):
    process = subprocess.Popen(
        s.command(*SMOKE, f"seed={seed}", f"hydra.run.dir={run_dir}"),
        cwd=s.base,
        env=s.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not wait_for() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def case_7_dead_runs(s: Scratch) -> None:
    print("7. SIGTERM marks a run interrupted; a SIGKILLed run is found crashed; its leftovers are swept")
    run_dir = s.base / "terminated"
    training = lambda: any((s.cache / "history").glob(".tmp-*"))  # noqa: E731  (pretraining has started)
    code, stderr = _start_and_signal(s, run_dir, 11, signal.SIGTERM, training)
    status = json.loads((run_dir / "status.json").read_text())
    print(f"    exit {code}: {textwrap.shorten(stderr.strip().splitlines()[-1], 300)}")
    check(
        code == 143 and status["state"] == "interrupted",
        "SIGTERM: exit 143, status interrupted",
        status["state"],
    )
    check(not list(s.cache.glob("*/.tmp-*")), "SIGTERM: no cache temporaries are left")
    check(not list((s.cache / ".scratch").glob("*")), "SIGTERM: no trainer scratch folder is left")

    run_dir = s.base / "killed"
    code, _ = _start_and_signal(s, run_dir, 11, signal.SIGKILL, training)
    status = json.loads((run_dir / "status.json").read_text())
    check(code == -9 and status["state"] == "running", "SIGKILL leaves status running (nothing can run)")
    leftovers = list(s.cache.glob("*/.tmp-*"))
    done = s.run(*SMOKE, "seed=11", f"hydra.run.dir={run_dir}")
    status = json.loads((run_dir / "status.json").read_text())
    log = (run_dir / "msa_bench.log").read_text()
    check(done.returncode == 0 and status["state"] == "done", "the rerun in that folder finishes")
    check(
        status.get("previous_attempt", {}).get("state") == "crashed",
        "and records the dead attempt as crashed",
    )
    check(
        bool(leftovers) and "cache sweep: removed" in log,
        "the killed build's temporaries were swept at start",
    )


_WANDB_FAILS = """
import sys, wandb
calls = []
def failing_init(*args, **kwargs):
    calls.append(1)
    raise wandb.errors.CommError("simulated: api.wandb.ai unreachable")
wandb.init = failing_init
sys.argv[0] = "msa-bench"
from msa_bench.cli import main
try:
    main()
finally:
    print(f"wandb.init calls: {len(calls)}", file=sys.stderr)
"""


def case_8_smaller_gaps(s: Scratch) -> None:
    print("8. smaller gaps: W&B online fallback, seed=-1, an honest report, a sweep with an unknown option")
    run_dir = s.base / "wandb_down"
    done = s.run(
        "experiment=smoke",
        "logger=wandb",
        "logger.mode=online",
        f"hydra.run.dir={run_dir}",
        python=_WANDB_FAILS,
        env={"WANDB_MODE": ""},
    )
    check(
        done.returncode == 0 and (run_dir / "metrics.jsonl").is_file(), "W&B down: the run completes locally"
    )
    check("wandb.init calls: 1" in done.stderr, "wandb.init is called once, not retried in-process")
    done = s.run(
        "experiment=smoke",
        "logger=wandb",
        "logger.mode=online",
        "logger.require_online=true",
        f"hydra.run.dir={s.base / 'wandb_required'}",
        python=_WANDB_FAILS,
        env={"WANDB_MODE": ""},
    )
    check(
        done.returncode == 2 and "require_online" in done.stderr, "logger.require_online=true: one-line error"
    )

    done = s.run(*SMOKE, "seed=-1", f"hydra.run.dir={s.base / 'bad_seed'}")
    show(done)
    check(done.returncode == 2 and "seed=-1" in done.stderr and done.seconds < 60, "seed=-1: named, at once")

    reports = s.base / "reports"
    shutil.copytree(run_dir, reports / "good", ignore=shutil.ignore_patterns("wandb"))
    (reports / "corrupt").mkdir()
    (reports / "corrupt" / "results.json").write_text('{"metrics": {"forget_quality": NaN')
    done = s.run("report", str(reports), "--out", str(s.base / "report_out"))
    check(
        done.returncode == 0 and "corrupt" in done.stdout + done.stderr, "report lists the unreadable input"
    )
    done = s.run("report", str(reports), "--out", str(s.base / "report_strict"), "--strict")
    check(done.returncode == 2, "report --strict exits 2 on it")

    sweep = s.base / "sweep_unknown_option"
    done = s.run("-m", *SMOKE, "method=msa,nosuch", f"hydra.sweep.dir={sweep}")
    check(
        done.returncode != 0 and (sweep / "sweep_summary.json").is_file(),
        "a sweep with an unknown option: summary",
    )


CASES = {
    1: case_1_corrupt_cache,
    2: case_2_plus_key_typos,
    3: case_3_safe_loading,
    4: case_4_truncated_data,
    5: case_5_disk,
    6: case_6_no_overwrite,
    7: case_7_dead_runs,
    8: case_8_smaller_gaps,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(map(str, CASES)), help="comma-separated case numbers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="msa-bench-reliability-"))
    started = time.perf_counter()
    try:
        for number in [int(n) for n in args.only.split(",")]:
            folder = base / f"case{number}"
            folder.mkdir()
            case_started = time.perf_counter()
            CASES[number](Scratch(folder))
            print(f"  ({time.perf_counter() - case_started:.0f} s)")
    finally:
        if args.keep:
            print(f"scratch folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    total = time.perf_counter() - started
    print(
        f"\n{len(_failures)} check(s) failed in {total:.0f} s"
        if _failures
        else f"\nall checks passed in {total:.0f} s"
    )
    return 1 if _failures else 0


if __name__ == "__main__":
    sys.exit(main())
