"""sweep_summary.json and sweep_summary.md: every job of one multirun and what became of it.

The jobs are read from their status.json files, so the summary works the same for every launcher (the jobs may have
run in other processes or on other machines). A multirun is identified by the id the callback writes into
<sweep dir>/.sweep_run.json at its start; status files of earlier invocations in the same folder are left out.
A job whose status still says `running` at the end of the sweep died without recording why (killed, out of memory):
it is listed as `crashed` when its process is gone (same host), else as `incomplete`; an `interrupted` job got
SIGTERM or SIGINT. All three count as failures.
"""

from __future__ import annotations

from pathlib import Path

from msa_bench.sweeps.status import (
    CRASHED,
    DONE,
    FAILED,
    INTERRUPTED,
    RUNNING,
    SKIPPED,
    STATUS_FILE,
    effective_state,
    job_folders,
    now_iso,
    read_json,
    relative_to,
    write_json_atomically,
)

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
INCOMPLETE = "incomplete"
_FAILING_STATES = (FAILED, INCOMPLETE, INTERRUPTED, CRASHED)


def _job_entry(folder: Path, sweep_dir: Path, status: dict) -> dict:
    state = effective_state(status)
    if state == RUNNING:
        state = INCOMPLETE
    error = status.get("error") or {}
    message = error.get("message", "")
    entry = {
        "job": status.get("job_num"),
        "dir": relative_to(folder, sweep_dir),
        "state": state,
        "overrides": status.get("overrides", []),
        "config_hash": status.get("config_hash"),
        "wall_seconds": status.get("wall_seconds"),
        "log_file": status.get("log_file"),
    }
    if state == FAILED:
        entry["error"] = f"{error.get('type', 'Error')}: {message}".strip()
    if state == INCOMPLETE:
        entry["error"] = "the job never recorded an end (killed, or out of memory?)"
    if state == CRASHED:
        entry["error"] = (
            f"its process (pid {status.get('pid')}) died without recording an end (killed, or out of memory?)"
        )
    if state == INTERRUPTED:
        entry["error"] = f"interrupted by {status.get('signal', 'a signal')}"
    if state == SKIPPED:
        entry["done_in"] = status.get("done_in")
    return entry


def collect_jobs(sweep_dir: Path, sweep_run: str | None = None) -> list[dict]:
    """The status of every job of this sweep run (all status files in the folder when sweep_run is None)."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for folder in job_folders(sweep_dir):
        status = read_json(folder / STATUS_FILE)
        if status is None:
            continue
        if sweep_run is not None and status.get("sweep_run") != sweep_run:
            continue
        jobs.append(_job_entry(folder, sweep_dir, status))
    jobs.sort(key=lambda j: (j["job"] is None, j["job"] if isinstance(j["job"], int) else 0, j["dir"]))
    return jobs


def build_summary(
    sweep_dir: Path, sweep_run: str | None = None, started_at: str | None = None, error: str | None = None
) -> dict:
    """The summary of one multirun; `error`: why the whole sweep stopped (e.g. Hydra could not compose a job)."""
    jobs = collect_jobs(sweep_dir, sweep_run)
    counts = {state: 0 for state in (DONE, SKIPPED, FAILED, INCOMPLETE)}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    n_failed = sum(counts.get(s, 0) for s in _FAILING_STATES)
    return {
        "sweep_dir": str(Path(sweep_dir).resolve()),
        "sweep_run": sweep_run,
        "started_at": started_at,
        "finished_at": now_iso(),
        "n_jobs": len(jobs),
        "counts": counts,
        "ok": n_failed == 0 and bool(jobs) and error is None,
        "error": error,
        "jobs": jobs,
    }


def _note(job: dict) -> str:
    if job["state"] == SKIPPED:
        return f"same config already done in {job.get('done_in')}"
    return job.get("error", "")


def _rows(summary: dict) -> list[list[str]]:
    rows = []
    for job in summary["jobs"]:
        wall = job.get("wall_seconds")
        rows.append(
            [
                "" if job["job"] is None else str(job["job"]),
                job["state"],
                " ".join(job["overrides"]),
                "" if wall is None else f"{wall:.1f}",
                job.get("config_hash") or "",
                _note(job),
            ]
        )
    return rows


_HEADERS = ["job", "state", "overrides", "wall s", "config hash", "note"]


def headline(summary: dict) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    line = f"{summary['n_jobs']} jobs: {counts or 'none recorded'}"
    if summary.get("error"):
        line += f"; the sweep stopped: {summary['error']}"
    return line


def to_markdown(summary: dict) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# Sweep summary: {summary['sweep_dir']}",
        "",
        headline(summary) + ("" if summary["ok"] else ". **The sweep has failures.**"),
        "",
        "| " + " | ".join(_HEADERS) + " |",
        "|" + "|".join("---" for _ in _HEADERS) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in _rows(summary)]
    failed = [j for j in summary["jobs"] if j["state"] in _FAILING_STATES]
    if failed:
        lines += ["", "Failed jobs: the traceback is in each job's status.json and log file."]
        lines += [f"- job {j['job']} (`{j['dir']}`): log `{j.get('log_file')}`" for j in failed]
    return "\n".join(lines) + "\n"


def to_text(summary: dict, max_note: int = 100) -> str:
    rows = [[*row[:-1], row[-1][:max_note]] for row in _rows(summary)]
    widths = [max(len(r[i]) for r in [_HEADERS, *rows]) for i in range(len(_HEADERS))]
    lines = [
        f"sweep summary ({summary['sweep_dir']}): {headline(summary)}",
        "  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def write_summary(
    sweep_dir: Path, sweep_run: str | None = None, started_at: str | None = None, error: str | None = None
) -> dict:
    """Write sweep_summary.json and sweep_summary.md into the sweep directory; returns the summary."""
    sweep_dir = Path(sweep_dir)
    summary = build_summary(sweep_dir, sweep_run, started_at, error)
    write_json_atomically(sweep_dir / SUMMARY_JSON, summary)
    (sweep_dir / SUMMARY_MD).write_text(to_markdown(summary))
    return summary
