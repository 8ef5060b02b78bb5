"""Batch benchmark: the daily Spark feature job over 30 days of events, against DuckDB.

Generates ``--events`` synthetic events over 30 days into a temporary lake (not timed), then times
the whole daily Spark part as Airflow runs it: ``spark-submit include/spark/daily_features.py``
for the last day, all four tables (JVM and session start included; the session start is also
reported alone, from the job's log). Then the same tables with the DuckDB reference
(:mod:`lambdarec.batch.duckdb_reference`), also written to Parquet. Prints one JSON line:
{"events", "seconds", "events_per_s", "duckdb_seconds", "ratio_vs_duckdb", ...}; progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from lambdarec.batch import duckdb_reference
from lambdarec.batch.spec import TABLES
from lambdarec.batch.submit import spark_job
from lambdarec.config import get_settings
from lambdarec.data.generator import GeneratorConfig, iter_event_batches
from lambdarec.data.lake import write_events
from lambdarec.tables import PARTITION_GLOB, events_path, partition_dir

DAYS = 30
START = date(2024, 1, 1)


def _log(message: str) -> None:
    print(f"[bench_batch] {message}", file=sys.stderr, flush=True)


def _rows(partition: Path) -> int:
    files = [p for p in partition.glob("*.parquet") if not p.name.startswith((".", "_"))]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _lake_rows(lake: Path) -> int:
    files = events_path(lake).glob(f"{PARTITION_GLOB}/*.parquet")
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000, help="events over 30 days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument(
        "--lake-dir", type=Path, help="reuse (or keep) this lake instead of a temp one"
    )
    parser.add_argument("--skip-duckdb", action="store_true")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")

    settings = get_settings()
    day = START + timedelta(days=DAYS - 1)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    lake = args.lake_dir or work / "lake"
    try:
        generate_s = 0.0
        if not (lake / "events").exists():
            config = GeneratorConfig(
                n_events=args.events,
                days=DAYS,
                start=START,
                seed=args.seed,
                n_users=max(1_000, args.events // 50),
                n_items=max(2_000, args.events // 100),
                n_categories=500,
            )
            _log(f"generating ~{args.events:,} events over {DAYS} days into {lake} ...")
            t0 = time.perf_counter()
            write_events(iter_event_batches(config, batch_rows=500_000), lake)
            generate_s = time.perf_counter() - t0
            _log(f"generated in {generate_s:.1f} s")
        n_events = _lake_rows(lake)

        job = spark_job(
            day,
            settings,
            lake_dir=lake,
            out_dir=work / "spark",
            master=args.master,
            driver_memory=args.driver_memory,
            shuffle_partitions=args.shuffle_partitions,
        )
        cmd = job.command()
        _log("spark: " + " ".join(cmd))
        env = {**os.environ, **job.env_vars}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        spark_s = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-6000:])
            raise SystemExit(f"spark-submit failed with exit code {proc.returncode}")
        log_text = proc.stdout + proc.stderr  # the Python driver's output reaches either
        session = re.search(r"session ready in ([\d.]+) s", log_text)
        tables = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r"(\w+) for \S+ written in ([\d.]+) s", log_text)
        }
        _log(f"spark-submit done in {spark_s:.1f} s; per table {tables}")
        rows = {name: _rows(partition_dir(work / "spark" / name, day)) for name in TABLES}

        duck_s = None
        if not args.skip_duckdb:
            _log("duckdb ...")
            t0 = time.perf_counter()
            duckdb_reference.write(lake, day, work / "duckdb")
            duck_s = time.perf_counter() - t0
            _log(f"duckdb done in {duck_s:.1f} s")
            duck_rows = {name: _rows(partition_dir(work / "duckdb" / name, day)) for name in TABLES}
            if duck_rows != rows:
                _log(f"WARNING: row counts differ: spark {rows}, duckdb {duck_rows}")

        result = {
            "events": n_events,
            "seconds": round(spark_s, 2),
            "events_per_s": round(n_events / spark_s),
            "duckdb_seconds": round(duck_s, 2) if duck_s is not None else None,
            "ratio_vs_duckdb": round(spark_s / duck_s, 2) if duck_s else None,
            "spark_session_s": float(session.group(1)) if session else None,
            "spark_tables_s": tables,
            "duckdb_events_per_s": round(n_events / duck_s) if duck_s else None,
            "rows": rows,
            "generate_s": round(generate_s, 1),
            "master": args.master,
            "cores": os.cpu_count(),
            "shuffle_partitions": args.shuffle_partitions,
            "driver_memory": args.driver_memory,
        }
        print(json.dumps(result), flush=True)
    finally:
        # A --lake-dir lake lives outside the work folder and is kept for the next run.
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
