"""The CSV the rows are appended to (benchmarks/README.md describes every column)."""

import csv
import datetime

CSV_COLUMNS = [
    "run_id",
    "timestamp_utc",
    "device",
    "device_name",
    "torch_version",
    "git_commit",
    "threads",
    "load_avg_1m",
    "quick",
    "provider",
    "mode",
    "N",
    "A",
    "C",
    "dtype",
    "layout",
    "input_sets",
    "warmup",
    "repeats",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_ms",
    "peak_extra_mib",
    "memory_method",
    "floor_bytes",
    "achieved_gbps",
    "copy_gbps",
    "floor_fraction",
    "loss",
    "loss_rel_err",
    "grad_rel_err",
    "timing",
    "page_faults_per_call",
    "arithmetic_pace_ns",
]


def append_csv(path, rows):
    """Appends `rows` (dicts with CSV_COLUMNS) to `path`, writing the header to a new file. A
    file written with other columns is kept beside under a new name and a new file started."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != CSV_COLUMNS:
            kept = path.with_name(f"{path.stem}.columns-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}{path.suffix}")
            path.rename(kept)
            print(f"{path} had other columns than this version writes: moved to {kept}")
            exists = False
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if not exists:
            writer.writeheader()
        for row in rows:
            writer.writerow(row)
