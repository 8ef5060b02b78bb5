"""Vector-index benchmark: build time, single-query latency and recall@100 of top-100 searches.

Prints one JSON line: {"backend", "items", "dim", "build_s", "p50_ms", "p99_ms", "recall_at_100",
...}. Random unit vectors are the hard case for HNSW recall; re-measure on real embeddings.

    python bench/bench_vector.py --backend lite --items 200000
    python bench/bench_vector.py --backend server --items 1000000   # starts a private server

``--backend server`` uses ``--uri`` if given (a running server), else starts the platform's
``milvus`` service in a temporary state folder and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):  # bounded temporaries
        block = rng.standard_normal((min(200_000, n - start), dim)).astype(np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


@contextlib.contextmanager
def milvus_uri(backend: str, uri: str | None) -> Iterator[str]:
    if uri:
        yield uri
    elif backend == "lite":
        with tempfile.TemporaryDirectory(prefix="bench-milvus-") as folder:
            yield str(Path(folder) / "items.db")
    else:
        from lambdarec.harness.platform import private_platform

        with private_platform(["milvus"]) as settings:
            yield settings.milvus_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["lite", "server"], default="lite")
    parser.add_argument("--uri", help="an existing Milvus (server URI or Lite path)")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef", type=int, default=256)
    args = parser.parse_args()

    from lambdarec.retrieval.index import IndexConfig, VectorIndex, exact_search

    matrix = unit_vectors(args.items, args.dim, seed=7)
    ids = [str(i) for i in range(args.items)]
    categories = [f"c{i % 100}" for i in range(args.items)]
    queries = unit_vectors(args.queries, args.dim, seed=8)
    truth = exact_search(matrix, ids, queries, args.k)

    with milvus_uri(args.backend, args.uri) as uri:
        config = IndexConfig(
            uri=uri,
            prefix="bench_items",
            keep=1,
            m=args.m,
            ef_construction=args.ef_construction,
            ef=args.ef,
            batch_size=10_000,
        )
        with VectorIndex(config) as index:
            began = time.perf_counter()
            version = index.publish(ids, matrix, categories, progress=False)
            build_s = time.perf_counter() - began
            latencies, found = [], []
            for query in queries:
                start = time.perf_counter()
                found.extend(index.search(query[None, :], args.k))
                latencies.append((time.perf_counter() - start) * 1000)
            recall = np.mean(
                [
                    len({i for i, _ in f} & {i for i, _ in t}) / args.k
                    for f, t in zip(found, truth, strict=True)
                ]
            )
            index.client.drop_collection(index.collection_name(version))
    print(
        json.dumps(
            {
                "backend": "milvus-lite" if args.backend == "lite" else "milvus-2.3.5",
                "items": args.items,
                "dim": args.dim,
                "build_s": round(build_s, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                "recall_at_100": round(float(recall), 3),
                "index": f"HNSW M{args.m} efC{args.ef_construction} ef{args.ef}",
                "queries": args.queries,
            }
        )
    )


if __name__ == "__main__":
    main()
