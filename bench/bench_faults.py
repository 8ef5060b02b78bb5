"""Fault drills at full length: each fault alone while 200k real events flow (see
:mod:`lambdarec.harness.drills`): the Kafka broker killed and restarted, the speed layer's
processes killed (its supervisor restarts it from the checkpoint), the Redis online store stopped
for 30 s. Prints one JSON line: {"drills", "drills_passed", "events_lost", "updates_lost",
"duplicates", "recovery_s" (per drill), "results" (each drill's counts)}; the exit code is 1 when a
drill failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lambdarec.harness.drills import FAULTS, stream_drill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per drill")
    parser.add_argument("--rate", type=float, default=5_000.0, help="replay rate, events/s")
    parser.add_argument("--outage-s", type=float, default=30.0, help="how long a service is down")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="bound of each wait")
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}"
    )
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or args.events < 1000 or args.rate <= 0 or args.outage_s < 0:
        print(
            f"bench_faults: need --faults from {', '.join(FAULTS)} (got {unknown or faults}), "
            "--events >= 1000, --rate > 0, --outage-s >= 0",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    results = []
    for fault in faults:
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
        "drills": [r.name for r in results],
        "drills_passed": sum(r.passed for r in results),
        "events_lost": sum(r.events_lost for r in results),
        "updates_lost": sum(r.updates_lost for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "recovery_s": {r.name: r.recovery_s for r in results},
        "results": [
            {k: v for k, v in r.as_dict().items() if k != "problems"}
            | {"problems": [p.splitlines()[0] for p in r.problems]}
            for r in results
        ],
    }
    print(json.dumps(line))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
