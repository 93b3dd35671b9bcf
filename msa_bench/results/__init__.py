"""The files a run leaves in its folder, as types shared by their writers and their readers.

- `record.py`: results.json, the run's metrics and what produced them (`RunResults`);
- `per_item.py`: per_item.json, one record per evaluated item (`PerItemRecords`), placed by `item_sets.py`;
- `files.py`: atomic writing and reading of JSON files.

Both files carry a `schema_version`; files written before it existed are converted on reading.
"""

from msa_bench.results.files import write_json_atomically
from msa_bench.results.per_item import (
    PER_ITEM_FILE,
    PER_ITEM_SCHEMA_VERSION,
    ItemRecord,
    ModelOutput,
    PerItemRecords,
    UnalignedValues,
    build_per_item_records,
)
from msa_bench.results.record import RESULTS_FILE, SCHEMA_VERSION, ReferenceMetrics, RunResults

__all__ = [
    "PER_ITEM_FILE",
    "PER_ITEM_SCHEMA_VERSION",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "ItemRecord",
    "ModelOutput",
    "PerItemRecords",
    "ReferenceMetrics",
    "RunResults",
    "UnalignedValues",
    "build_per_item_records",
    "write_json_atomically",
]
