"""Serving benchmark: /recommend under a steady request rate against gunicorn on loopback.

Builds what serving needs on a throwaway platform: a run folder from the retraining's own steps
(``lambdarec.models.retrain``: build, train the two-tower, train the DeepFM on its candidates) on
the synthetic clickstream, its two-tower export pinned with LAMBDAREC_SERVING_MODEL_DIR so serving
finds the DeepFM's serving export as its sibling ``deepfm/``; the item embeddings padded with
random vectors of the same norms up to ``--catalog-items`` and published to the vector index (the
real Milvus 2.3.5 standalone server by default, ``--milvus lite`` for the file), the catalog in the
lake, one pushed session per benchmark user in the online store. It waits until the Milvus server
is idle (after a bulk load it compacts and indexes for minutes), then starts
``gunicorn 'serving:create_app()'`` as the platform does, waits for ``/ready``, checks that
requests are answered by both stages (the bench fails when the query tower or the ranker is
missing), and sends ``--rps`` requests per second for ``--seconds`` from ``--clients``
closed-loop clients (each waits for its answer, then for its next slot). Prints one JSON line:
{"catalog_items", "rps", "p50_ms", "p95_ms", "p99_ms", "errors", "degraded", "degraded_parts",
"stage_p50_ms", "stage_p99_ms", ...} where the stage figures come from the responses' own
``timings_ms`` and ``degraded_parts`` counts the responses listing each part (under load a part
is listed when its guard timed out or is backing off); ``outside_stages_*`` is the client's
latency minus the stages (HTTP, gunicorn's queue, the JSON body, the impression record);
``p99_ms_from_schedule`` counts each request from its slot (a client held up by a slow answer
sends late); ``cpu_ms_per_request`` is the CPU time of gunicorn, Kafka (impressions), the Milvus
server and the load generator per request during the measured load (their sum is what the
machine's cores must hold at ``--rps``). ``--also-rps 50,100,150`` then measures each further rate
for ``--also-seconds`` on the same servers and adds them under ``at_rps``: the latency curve,
where the rate at which a p99 target still holds can be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def build_model(work: Path, epochs: int) -> tuple[Path, list[str], np.ndarray, list[str]]:
    """A run folder as ``weekly_model_retraining`` leaves it, from its own steps on the synthetic
    clickstream: ``two_tower/`` (the export serving pins) and ``deepfm/serving/`` beside it (the
    ranker serving finds as the pinned folder's sibling). Returns the two-tower folder and its
    item embeddings with their categories."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from lambdarec.models import retrain
    from lambdarec.models.deepfm import SERVING_EXPORT, DeepFMConfig
    from lambdarec.models.two_tower import TwoTowerConfig

    run_dir = work / "run"
    retrain.build("synthetic", run_dir)
    retrain.train_retriever(run_dir, TwoTowerConfig(epochs=epochs, max_train=100_000))
    retrain.train_ranker(run_dir, DeepFMConfig(epochs=epochs))
    model_dir = run_dir / "two_tower"
    if not (run_dir / "deepfm" / SERVING_EXPORT / "ranker.json").is_file():
        raise SystemExit(f"{run_dir}/deepfm holds no serving export: serving would not rank")
    data = retrain.load_built(run_dir)
    saved = np.load(model_dir / "item_embeddings.npz")
    ids = [str(i) for i in saved["ids"]]
    code = {
        str(i): int(c) for i, c in zip(data.catalog.item_ids, data.catalog.category, strict=True)
    }
    cats = [f"c{code.get(i, 0)}" for i in ids]
    return model_dir, ids, np.asarray(saved["embeddings"], dtype=np.float32), cats


def padded(
    ids: list[str], emb: np.ndarray, cats: list[str], total: int, seed: int = 7
) -> tuple[list[str], np.ndarray, list[str]]:
    """The real items plus random vectors (same norm distribution) up to ``total`` items."""
    extra = max(0, total - len(ids))
    if not extra:
        return ids, emb, cats
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(emb, axis=1)
    pad = rng.standard_normal((extra, emb.shape[1])).astype(np.float32)
    pad /= np.linalg.norm(pad, axis=1, keepdims=True)
    pad *= rng.choice(norms, size=extra)[:, None]
    names = [f"pad-{n}" for n in range(extra)]
    return ids + names, np.vstack([emb, pad]), cats + ["pad"] * extra


def load(url: str, rps: float, seconds: float, clients: int, users: list[str]) -> dict[str, Any]:
    import http.client
    from urllib.parse import urlencode, urlsplit

    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    #: Per request, the client's latency minus the pipeline's stages: HTTP on loopback, gunicorn's
    #: queueing, the JSON body, the impression record.
    outside: list[float] = []
    #: Latency from the request's slot, not its send: a client held up by a slow answer sends
    #: late, and a latency from the send alone would hide that wait (coordinated omission).
    scheduled: list[float] = []
    errors = degraded = 0
    parts: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    interval = clients / rps

    parsed = urlsplit(url)

    def client(n: int) -> None:
        # http.client, not requests: a third of the CPU per request (0.45 vs 1.5 ms), and the
        # load generator shares the machine's cores with the server it measures.
        nonlocal errors, degraded
        conn: http.client.HTTPConnection | None = None
        rng = np.random.default_rng(n)
        slot = 0
        while True:
            due = start + (n / clients + slot) * interval
            if due - start >= seconds:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            slot += 1
            user = users[int(rng.integers(len(users)))]
            query = urlencode({"user_id": user, "session_id": f"b-{user}", "k": 10})
            sent = time.perf_counter()
            late = max(0.0, time.monotonic() - due) * 1000
            body = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5)
                conn.request("GET", f"{parsed.path}?{query}")
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status == 200:
                    body = json.loads(payload)
            except (OSError, http.client.HTTPException, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
            took = (time.perf_counter() - sent) * 1000
            with lock:
                latencies.append(took)
                scheduled.append(late + took)
                if body is None:
                    errors += 1
                    continue
                degraded += bool(body.get("degraded"))
                for part in body.get("degraded_parts") or ():
                    parts[part] = parts.get(part, 0) + 1
                timings = body.get("timings_ms") or {}
                for name, ms in timings.items():
                    stages.setdefault(name, []).append(float(ms))
                outside.append(took - sum(float(ms) for ms in timings.values()))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {
        "rps": rps,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "p50_ms": _percentile(latencies, 0.50),
        "p95_ms": _percentile(latencies, 0.95),
        "p99_ms": _percentile(latencies, 0.99),
        "p99_ms_from_schedule": _percentile(scheduled, 0.99),
        "errors": errors,
        "degraded": degraded,
        "degraded_parts": parts,
        "stage_p50_ms": {k: _percentile(v, 0.5) for k, v in sorted(stages.items())},
        "stage_p99_ms": {k: _percentile(v, 0.99) for k, v in sorted(stages.items())},
        "outside_stages_p50_ms": _percentile(outside, 0.5),
        "outside_stages_p99_ms": _percentile(outside, 0.99),
    }


def push_sessions(
    settings: Any, users: list[str], items: list[str], cats: list[str], seed: int = 11
) -> None:
    """One speed-layer session per user (``b-<user>``) in the online store, each with 1-10 viewed
    items of the trained catalog: the query tower encodes a history and the ranker scores against
    it, as for a shopper mid-session (without them every request is the empty-session query)."""
    from datetime import UTC, datetime

    import pandas as pd

    from lambdarec.features.store import push_session_features
    from lambdarec.tables import SESSION_FEATURES

    rng = np.random.default_rng(seed)
    category = dict(zip(items, cats, strict=True))
    now = datetime.now(UTC)
    rows = []
    for user in users:
        viewed = [items[int(i)] for i in rng.integers(len(items), size=int(rng.integers(1, 11)))]
        rows.append(
            {
                "session_id": f"b-{user}",
                "event_timestamp": now,
                "user_id": user,
                "last_viewed_items": viewed,
                "last_carted_items": [],
                "last_purchased_items": [],
                "n_views": len(viewed),
                "n_carts": 0,
                "n_removes": 0,
                "n_purchases": 0,
                "n_events_30min": len(viewed),
                "session_category": category[viewed[0]],
                "session_avg_price": 10.0,
                "seconds_since_prev_event": 20.0,
            }
        )
    push_session_features(pd.DataFrame(rows)[list(SESSION_FEATURES.columns)], settings)


#: Parts whose absence means the benchmark does not measure the two-stage path.
MODEL_PARTS = ("model", "ranker")


def require_models(url: str, users: list[str], probes: int = 20) -> None:
    """Fail unless serving runs both stages: after warm-up, sequential requests (no load, so no
    timeouts) must not list the query tower or the ranker as degraded. A part that is absent
    (not loaded, unreadable export) is listed on every request."""
    import requests

    listed: dict[str, int] = {}
    for n in range(probes):
        user = users[n % len(users)]
        body = requests.get(
            url, params={"user_id": user, "session_id": f"b-{user}", "k": 10}, timeout=10
        ).json()
        for part in set(body.get("degraded_parts") or ()) & set(MODEL_PARTS):
            listed[part] = listed.get(part, 0) + 1
    if listed:
        raise SystemExit(
            f"after warm-up, {listed} of {probes} unloaded requests still list these parts as "
            "degraded: serving is not running the two-stage path (see serving.log)"
        )


def cpu_seconds(settings: Any, names: list[str]) -> dict[str, float]:
    """CPU time (user + system) so far of each service's process tree, from its PID file, and of
    this process (the load generator shares the machine's cores with the server)."""
    import os
    from urllib.parse import urlsplit

    import psutil

    def tree(process: psutil.Process) -> float:
        total = 0.0
        for proc in [process, *process.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def listener(uri: str) -> psutil.Process | None:
        """The process listening on the port of ``uri`` (a server the bench did not start)."""
        port = urlsplit(uri).port
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                process = psutil.Process(conn.pid)
                parent = process.parent()  # the milvus-server wrapper around the Go binary
                return parent if parent is not None and parent.pid != 1 else process
        return None

    out: dict[str, float] = {}
    for name in names:
        try:
            pid_file = settings.run_dir / f"{name}.pid"
            if name == "milvus" and not pid_file.is_file():
                process = listener(str(settings.milvus_uri))
                if process is not None:
                    out[name] = tree(process)
                continue
            out[name] = tree(psutil.Process(int(json.loads(pid_file.read_text())["pid"])))
        except (OSError, ValueError, KeyError, psutil.Error):
            continue
    own = psutil.Process(os.getpid()).cpu_times()  # not its tree: the services are its children
    out["bench_client"] = own.user + own.system
    return out


def wait_until_idle(
    settings: Any, below: float = 0.1, window_s: float = 10.0, timeout_s: float = 1200.0
) -> None:
    """Wait until the Milvus server uses less than ``below`` of a core over ``window_s``.

    After a bulk load the server compacts the segments and builds the HNSW graph of each merged
    one, which took both cores for minutes after a 1M-item publish (measured: ~1.97 cores for
    more than 3 minutes after the publish returned). A load measured meanwhile measures that work
    too.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        before = cpu_seconds(settings, ["milvus"]).get("milvus")
        time.sleep(window_s)
        after = cpu_seconds(settings, ["milvus"]).get("milvus")
        if before is None or after is None:
            print("cannot find the Milvus server's process; not waiting for it", file=sys.stderr)
            return
        busy = (after - before) / window_s
        if busy < below:
            print(f"Milvus server idle ({busy:.2f} of a core)", file=sys.stderr)
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the Milvus server still uses {busy:.2f} of a core after "
                f"{timeout_s:.0f} s: its compaction or index building never ends"
            )
        print(
            f"waiting for the Milvus server to finish compacting and indexing "
            f"({busy:.2f} of a core)",
            file=sys.stderr,
        )


def publish(settings: Any, ids: list[str], emb: np.ndarray, cats: list[str]) -> None:
    from lambdarec.retrieval.index import VectorIndex

    with VectorIndex.from_settings(settings) as index:
        index.publish(ids, emb, cats, progress=False)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated rates such as 50,100,150"
        ) from None
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be above 0 requests/s")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog-items", type=int, default=1_000_000)
    parser.add_argument("--milvus", choices=("server", "lite"), default="server")
    parser.add_argument(
        "--milvus-uri",
        help="a running Milvus server to publish to and search "
        "(default: start a private one); the collection stays there",
    )
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--also-rps",
        type=_rates,
        default=[],
        help="comma-separated further rates, each measured for --also-seconds after the main "
        "one; reported under at_rps (percentiles, errors, stages, CPU per request)",
    )
    parser.add_argument("--also-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--settle-s", type=float, default=0.0, help="Wait after publishing.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="lambdarec-bench-serving-"))
    try:
        print(json.dumps(run(args, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import multiprocessing

    import pyarrow as pa
    import requests

    from lambdarec.data import lake
    from lambdarec.features.store import apply
    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.waiting import eventually
    from lambdarec.platform import manager

    t0 = time.monotonic()
    model_dir, ids, emb, cats = build_model(work, args.epochs)
    trained_ids, trained_cats = ids, cats
    ids, emb, cats = padded(ids, emb, cats, args.catalog_items)
    print(
        f"model trained and exported in {time.monotonic() - t0:.0f} s; {len(ids):,} items to index",
        file=sys.stderr,
    )
    own_milvus = args.milvus == "server" and not args.milvus_uri
    services = ["kafka", "milvus"] if own_milvus else ["kafka"]
    with private_platform(services, start_timeout_s=240) as settings:
        if args.milvus == "server":
            uri = args.milvus_uri or f"http://127.0.0.1:{settings.milvus_port}"
            settings = settings.model_copy(update={"milvus_uri": uri})
        # No rate limit: the load generator is one client IP asking at the measured rate.
        settings = settings.model_copy(
            update={"serving_model_dir": str(model_dir), "rate_limit_rps": 0.0}
        )
        apply(settings)
        catalog = pa.table(
            {
                "item_id": ids,
                "category": cats,
                "price": np.full(len(ids), 10.0),
                "created_at": pa.array([None] * len(ids), pa.timestamp("ms", tz="UTC")),
            }
        )
        lake.write_catalog(catalog, settings.lake_dir)
        t1 = time.monotonic()
        # In a child process: Milvus Lite keeps its file locked until the process that opened it
        # exits, and serving must open it next.
        child = multiprocessing.get_context("spawn").Process(
            target=publish, args=(settings, ids, emb, cats)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"publishing the index failed (exit {child.exitcode})")
        print(f"index published in {time.monotonic() - t1:.0f} s", file=sys.stderr)
        time.sleep(args.settle_s)  # Milvus merges segments after a bulk load (FINDINGS)
        if args.milvus == "server":
            wait_until_idle(settings)
        try:
            manager.up(["serving"], settings=settings, timeout_s=300)
            base = f"http://{settings.bind_host}:{settings.serving_port}"
            checks: dict[str, str] = {}

            def ready() -> bool:
                nonlocal checks
                checks = requests.get(f"{base}/ready", timeout=10).json()["checks"]
                return checks.get("warm_up") == "ok" and checks.get("index") == "ok"

            eventually(ready, 600, interval_s=1, message=lambda: f"serving ready (last: {checks})")
            users = [f"u{n}" for n in range(2000)]
            push_sessions(settings, users, trained_ids, trained_cats)
            load(f"{base}/recommend", 20, 10, 4, users)  # warm-up (JIT, caches, Milvus segments)
            require_models(f"{base}/recommend", users)
            processes = ["serving", "kafka", *(["milvus"] if args.milvus == "server" else [])]

            def measure(rps: float, seconds: float) -> dict[str, Any]:
                cpu_before = cpu_seconds(settings, processes)
                print(f"measuring: {rps:g} req/s for {seconds:g} s", file=sys.stderr)
                out = load(f"{base}/recommend", rps, seconds, args.clients, users)
                cpu_after = cpu_seconds(settings, processes)
                out["cpu_ms_per_request"] = {
                    name: round((cpu_after[name] - cpu_before[name]) * 1000 / out["requests"], 2)
                    for name in cpu_after
                    if name in cpu_before and out["requests"]
                }
                return out

            result = measure(args.rps, args.seconds)
            if args.also_rps:
                # The latency curve: at which rate does this machine still meet a p99 target?
                result["at_rps"] = {}
                for rps in args.also_rps:
                    extra = measure(rps, args.also_seconds)
                    result["at_rps"][f"{rps:g}"] = {
                        key: extra[key]
                        for key in (
                            "achieved_rps",
                            "p50_ms",
                            "p95_ms",
                            "p99_ms",
                            "errors",
                            "degraded",
                            "stage_p50_ms",
                            "stage_p99_ms",
                            "outside_stages_p50_ms",
                            "outside_stages_p99_ms",
                            "cpu_ms_per_request",
                        )
                    }
        finally:
            failures: dict[str, int] = {}
            log_file = settings.log_dir / "serving.log"
            for line in (
                log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
            ):
                if " failed (" in line:
                    key = line[line.find("]") + 1 :].strip()[:160]
                    failures[key] = failures.get(key, 0) + 1
            for key, n in sorted(failures.items(), key=lambda kv: -kv[1])[:8]:
                print(f"  {n} x {key}", file=sys.stderr)
            manager.down(["serving"], settings=settings)
    return {"catalog_items": len(ids), "milvus": args.milvus, **result}


if __name__ == "__main__":
    main()
