"""Serving benchmark: /recommend under a steady request rate against gunicorn on loopback.

Builds what serving needs on a throwaway platform: a two-tower trained briefly on the synthetic
clickstream (its export pinned with LAMBDAREC_SERVING_MODEL_DIR), its item embeddings padded with
random vectors of the same norms up to ``--catalog-items`` and published to the vector index (the
real Milvus 2.3.5 standalone server by default, ``--milvus lite`` for the file), the catalog in the
lake; then starts ``gunicorn 'serving:create_app()'`` as the platform does, waits for ``/ready``,
and sends ``--rps`` requests per second for ``--seconds`` from ``--clients`` closed-loop clients
(each waits for its answer, then for its next slot). Prints one JSON line:
{"catalog_items", "rps", "p50_ms", "p95_ms", "p99_ms", "errors", "degraded", "stage_p50_ms", ...}
where the stage figures come from the responses' own ``timings_ms``.
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
    """Train a two-tower briefly on the synthetic clickstream and export it."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from lambdarec.models import two_tower
    from lambdarec.models.data import load_dataset

    data = load_dataset("synthetic")
    trained = two_tower.train_two_tower(
        data, two_tower.TwoTowerConfig(epochs=epochs, max_train=100_000)
    )
    model_dir = work / "two_tower"
    two_tower.export(trained, model_dir)
    saved = np.load(model_dir / "item_embeddings.npz")
    ids = [str(i) for i in saved["ids"]]
    code = {str(i): int(c) for i, c in zip(data.catalog.item_ids, data.catalog.category,
                                            strict=True)}  # fmt: skip
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
    import requests

    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = degraded = 0
    parts: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic() + 0.5
    interval = clients / rps

    def client(n: int) -> None:
        nonlocal errors, degraded
        session = requests.Session()
        rng = np.random.default_rng(n)
        slot = 0
        while True:
            due = start + (n / clients + slot) * interval
            if due - start >= seconds:
                return
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            slot += 1
            user = users[int(rng.integers(len(users)))]
            sent = time.perf_counter()
            try:
                resp = session.get(url, params={"user_id": user, "session_id": f"b-{user}",
                                                "k": 10}, timeout=5)  # fmt: skip
                took = (time.perf_counter() - sent) * 1000
                body = resp.json() if resp.status_code == 200 else None
            except (requests.RequestException, ValueError):
                took, body = (time.perf_counter() - sent) * 1000, None
            with lock:
                latencies.append(took)
                if body is None:
                    errors += 1
                    continue
                degraded += bool(body.get("degraded"))
                for part in body.get("degraded_parts") or ():
                    parts[part] = parts.get(part, 0) + 1
                for name, ms in (body.get("timings_ms") or {}).items():
                    stages.setdefault(name, []).append(float(ms))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {
        "rps": rps, "achieved_rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "p50_ms": _percentile(latencies, 0.50), "p95_ms": _percentile(latencies, 0.95),
        "p99_ms": _percentile(latencies, 0.99), "errors": errors, "degraded": degraded,
        "degraded_parts": parts,
        "stage_p50_ms": {k: _percentile(v, 0.5) for k, v in sorted(stages.items())},
        "stage_p99_ms": {k: _percentile(v, 0.99) for k, v in sorted(stages.items())},
    }  # fmt: skip


def publish(settings: Any, ids: list[str], emb: np.ndarray, cats: list[str]) -> None:
    from lambdarec.retrieval.index import VectorIndex

    with VectorIndex.from_settings(settings) as index:
        index.publish(ids, emb, cats, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog-items", type=int, default=1_000_000)
    parser.add_argument("--milvus", choices=("server", "lite"), default="server")
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--settle-s", type=float, default=0.0, help="Wait after publishing.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import tempfile

    import pyarrow as pa
    import requests

    from lambdarec.data import lake
    from lambdarec.features.store import apply
    from lambdarec.platform import manager
    from lambdarec.platform.testing import private_platform

    work = Path(tempfile.mkdtemp(prefix="lambdarec-bench-serving-"))
    t0 = time.monotonic()
    model_dir, ids, emb, cats = build_model(work, args.epochs)
    ids, emb, cats = padded(ids, emb, cats, args.catalog_items)
    print(f"model trained and exported in {time.monotonic() - t0:.0f} s; "
          f"{len(ids):,} items to index", file=sys.stderr)  # fmt: skip
    services = ["kafka", "milvus"] if args.milvus == "server" else ["kafka"]
    with private_platform(services, start_timeout_s=240) as settings:
        if args.milvus == "server":
            settings = settings.model_copy(
                update={"milvus_uri": f"http://127.0.0.1:{settings.milvus_port}"}
            )
        settings = settings.model_copy(update={"serving_model_dir": str(model_dir)})
        apply(settings)
        catalog = pa.table(
            {"item_id": ids, "category": cats, "price": np.full(len(ids), 10.0),
             "created_at": pa.array([None] * len(ids), pa.timestamp("ms", tz="UTC"))}
        )  # fmt: skip
        lake.write_catalog(catalog, settings.lake_dir)
        t1 = time.monotonic()
        # In a child process: Milvus Lite keeps its file locked until the process that opened it
        # exits, and serving must open it next.
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=publish, args=(settings, ids, emb, cats)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"publishing the index failed (exit {child.exitcode})")
        print(f"index published in {time.monotonic() - t1:.0f} s", file=sys.stderr)
        time.sleep(args.settle_s)  # Milvus merges segments after a bulk load (FINDINGS)
        try:
            manager.up(["serving"], settings=settings, timeout_s=300)
            base = f"http://{settings.bind_host}:{settings.serving_port}"
            deadline = time.monotonic() + 600
            while True:
                checks = requests.get(f"{base}/ready", timeout=10).json()["checks"]
                if checks.get("warm_up") == "ok" and checks.get("index") == "ok":
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"serving not ready: {checks}")
                time.sleep(1)
            users = [f"u{n}" for n in range(2000)]
            load(f"{base}/recommend", 20, 10, 4, users)  # warm-up (JIT, caches, Milvus segments)
            result = load(f"{base}/recommend", args.rps, args.seconds, args.clients, users)
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
    print(json.dumps({"catalog_items": len(ids), "milvus": args.milvus, **result}))


if __name__ == "__main__":
    main()
