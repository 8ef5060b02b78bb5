"""Fault drills at full length (see :mod:`lambdarec.harness.drills`): each stream fault alone
while 200k real events flow (the Kafka broker killed and restarted, the speed layer's processes
killed and healed by its supervisor, the Redis online store stopped for 30 s), then a load into a
lake whose disk fills up, the Milvus server killed half-way through a publish, and the daily DAG run twice for the same day (Taobao, real Spark, Feast
and GX), and a 30-minute soak at 50 /recommend requests per second with events flowing (serving's
and the pusher's resident memory may grow under 5% after the warm-up). Prints one JSON line: {"drills", "drills_passed", "events_lost", "updates_lost",
"duplicates", "recovery_s" (per stream drill), "results" (each drill's counts)}; the exit code is 1
when a drill failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lambdarec.harness.drills import (
    FAULTS,
    daily_rerun_drill,
    disk_full_drill,
    milvus_publish_drill,
    soak_drill,
    stream_drill,
)

OTHER_DRILLS = ("disk_full", "milvus_publish", "daily_twice", "soak")


def _daily_twice() -> dict[str, object]:
    """The daily DAG over the Taobao subset for its last full day, then once more."""
    import shutil
    import tempfile
    from pathlib import Path

    import pandas as pd

    from lambdarec.data import lake
    from lambdarec.data.loaders import load_taobao
    from lambdarec.harness.platform import private_settings
    from lambdarec.platform.dag_run import run_dag_test

    state = Path(tempfile.mkdtemp(prefix="lambdarec-bench-daily-"))
    try:
        settings = private_settings(state)
        events = load_taobao(official_window=True)
        day = (events["ts"].max() - pd.Timedelta(days=1)).date().isoformat()
        lake.write_events(events, settings.lake_dir)
        first = run_dag_test("daily_feature_pipeline", day, settings)
        if not first.success:
            return {"name": "daily_twice", "passed": False, "problems": ["the first run failed"]}
        return {"name": "daily_twice", **daily_rerun_drill(settings, day).as_dict()}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per drill")
    parser.add_argument("--rate", type=float, default=5_000.0, help="replay rate, events/s")
    parser.add_argument("--outage-s", type=float, default=30.0, help="how long a service is down")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="bound of each wait")
    parser.add_argument("--soak-minutes", type=float, default=30.0, help="length of the soak")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS + OTHER_DRILLS),
        help=f"comma-separated, of {', '.join(FAULTS + OTHER_DRILLS)}",
    )
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS + OTHER_DRILLS))
    if unknown or args.events < 1000 or args.rate <= 0 or args.outage_s < 0:
        print(
            f"bench_faults: need --faults from {', '.join(FAULTS + OTHER_DRILLS)} (got "
            f"{unknown or faults}), "
            "--events >= 1000, --rate > 0, --outage-s >= 0",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    results = []
    others: list[dict[str, object]] = []
    for fault in faults:
        if fault == "disk_full":
            others.append({"name": "disk_full", **disk_full_drill(args.events).as_dict()})
            logging.info("drill disk_full: %s", json.dumps(others[-1]))
            continue
        if fault == "milvus_publish":
            others.append({"name": "milvus_publish", **milvus_publish_drill().as_dict()})
            logging.info("drill milvus_publish: %s", json.dumps(others[-1]))
            continue
        if fault == "soak":
            others.append({"name": "soak", **soak_drill(args.soak_minutes * 60, 50.0).as_dict()})
            logging.info("drill soak: %s", json.dumps(others[-1]))
            continue
        if fault == "daily_twice":
            others.append(_daily_twice())
            logging.info("drill daily_twice: %s", json.dumps(others[-1]))
            continue
        result = stream_drill(
            [fault],
            events=args.events,
            rate=args.rate,
            outage_s=args.outage_s,
            timeout_s=args.timeout_s,
        )
        logging.info("drill %s: %s", fault, json.dumps(result.as_dict()))
        results.append(result)
    line = {
        "drills": [r.name for r in results] + [str(o["name"]) for o in others],
        "drills_passed": sum(r.passed for r in results) + sum(bool(o["passed"]) for o in others),
        "events_lost": sum(r.events_lost for r in results),
        "updates_lost": sum(r.updates_lost for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "recovery_s": {r.name: r.recovery_s for r in results},
        "results": [
            {k: v for k, v in r.as_dict().items() if k != "problems"}
            | {"problems": [p.splitlines()[0] for p in r.problems]}
            for r in results
        ]
        + others,
    }
    print(json.dumps(line))
    return 0 if line["drills_passed"] == len(line["drills"]) else 1


if __name__ == "__main__":
    sys.exit(main())
