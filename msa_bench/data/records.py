"""Reading benchmark data files in full, with errors that name the file, the line and the field.

Every benchmark loader reads its JSON and JSONL files through these functions, and so does the preflight that runs
before any training (`Benchmark.preflight`): a truncated or malformed file is found there, in one line such as

    /data/tofu/forget01.jsonl line 37: not valid JSON (truncated file?): Unterminated string starting at (column 14); ...

never as a bare JSONDecodeError, or hours later when the stage that reads it starts.

Fields are checked by kind: `TEXT` is a non-empty string, `TEXT_LIST` a non-empty list of non-empty strings (the
answer lists of TOFU's perturbed sets, RESTOR's accepted answers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msa_bench.errors import DataError, MalformedDataError

TEXT = "text"
TEXT_LIST = "text list"
FieldKinds = Mapping[str, str]

RESTORE_HINT = (
    "replace it with an intact copy of the benchmark's file (from the hub dataset or ../shared/data)"
)


def _described(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def field_problem(record: Mapping, name: str, kind: str) -> str | None:
    """What is wrong with `record[name]` for a field of `kind`, or None when it is fine."""
    if name not in record:
        return f"has no field {name!r}"
    value = record[name]
    if kind == TEXT:
        if not isinstance(value, str) or not value.strip():
            return f"field {name!r} must be a non-empty string, got {_described(value)}"
    elif kind == TEXT_LIST:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item.strip() for item in value)
        ):
            return f"field {name!r} must be a non-empty list of non-empty strings, got {_described(value)}"
    else:  # pragma: no cover - a programming error in a caller's field table
        raise ValueError(f"unknown field kind {kind!r}")
    return None


def check_record(record: Any, fields: FieldKinds, where: str, *, fix: str = RESTORE_HINT) -> dict:
    """`record` when it is a JSON object with every field of `fields`; a MalformedDataError naming `where` (the file
    and line or record number) and the field otherwise."""
    if not isinstance(record, dict):
        raise MalformedDataError(
            f"{where}: expected a JSON object with fields {sorted(fields)}, got {_described(record)}; {fix}"
        )
    for name, kind in fields.items():
        problem = field_problem(record, name, kind)
        if problem:
            raise MalformedDataError(f"{where}: {problem}; {fix}")
    return record


def _missing(path: Path, what: str) -> DataError:
    return DataError(f"{what} not found: {path.resolve()} does not exist")


def read_jsonl(
    path: Path,
    fields: FieldKinds | None = None,
    *,
    what: str = "data file",
    allow_empty: bool = False,
    fix: str = RESTORE_HINT,
) -> list:
    """Every record of a JSONL file (blank lines skipped); with `fields` (even empty), each must be a JSON object
    with those fields, else any JSON value is kept.

    Raises DataError when the file is missing, MalformedDataError naming the line for a line that is not UTF-8, not
    JSON or lacks a field, and for a file without records unless `allow_empty`."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    records: list = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise MalformedDataError(
                    f"{where}: not UTF-8 text ({error.reason} at byte {error.start}; truncated file?); {fix}"
                ) from error
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise MalformedDataError(
                    f"{where}: not valid JSON (truncated file?): {error.msg} (column {error.colno}); {fix}"
                ) from error
            records.append(record if fields is None else check_record(record, fields, where, fix=fix))
    if not records and not allow_empty:
        raise MalformedDataError(f"{path} holds no records, but the run reads this {what}; {fix}")
    return records


def read_json(path: Path, *, what: str = "data file", fix: str = RESTORE_HINT) -> Any:
    """The JSON value in `path`. Raises DataError when it is missing, MalformedDataError naming the line and column
    when it is not UTF-8 or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise MalformedDataError(
            f"{path} line {line}: not UTF-8 text ({error.reason} at byte {error.start}; truncated file?); {fix}"
        ) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedDataError(
            f"{path} line {error.lineno} column {error.colno}: not valid JSON (truncated file?): {error.msg}; {fix}"
        ) from error


def read_json_list(
    path: Path,
    fields: FieldKinds | None = None,
    *,
    what: str = "data file",
    allow_empty: bool = False,
    fix: str = RESTORE_HINT,
) -> list:
    """A JSON file holding a list; with `fields`, each item a JSON object with those fields (errors name the
    record's index). Raises as `read_json`, and MalformedDataError when it holds no list or (unless `allow_empty`)
    an empty one."""
    path = Path(path)
    records = read_json(path, what=what, fix=fix)
    if not isinstance(records, list):
        raise MalformedDataError(
            f"{path}: must hold a JSON list of records, got a JSON {type(records).__name__}; {fix}"
        )
    if not records and not allow_empty:
        raise MalformedDataError(f"{path} holds no records, but the run reads this {what}; {fix}")
    if fields:
        for index, record in enumerate(records):
            check_record(record, fields, f"{path} record {index}", fix=fix)
    return records
