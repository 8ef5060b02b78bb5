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
machine's cores must hold at ``--rps``); ``cpu_ms_total`` is that sum without the load generator
(``bench_client``): what serving a request costs, all its processes together.

Where the milliseconds go: after the main load, a load of its own at ``--rps`` for
``--profile-seconds`` (the profiler takes CPU the main load should not measure; its figures are
under ``profiled_load``) during which py-spy samples the serving workers and the Milvus server's
Go CPU profile is fetched from its pprof endpoint (the metrics port, 9091), both saved in
``--profile-dir`` (printed as ``profile_dir``; ``--no-profile`` skips them). ``profile_top`` is
the workers' self time (the functions and packages most often on top of the sampled stacks, as
shares of the samples), ``milvus_profile_top`` the server's (functions without a symbol are its
C++ code), ``profiler_cpu_ms_per_request`` py-spy's own CPU (counted in no process above, but it
shares the cores).

The floor, in the same run: after the loads, this process times on one thread the bare work of a
request over the same items and the same users' sessions: the online-store read serving makes,
the query tower, an in-process HNSW search (faiss, serving's M and ef; the graph is built while
the Milvus server settles, before any load) of the pipeline's first fetch, and the ranker's pass
over the candidates the pipeline's sources give (see :func:`floor`). ``floor_parts_ms`` are each
part's median CPU time, ``floor_cpu_ms`` their sum and ``floor_ratio`` = the main load's
``cpu_ms_total / floor_cpu_ms``: progress as a ratio, which holds on a noisy machine where the
milliseconds do not. ``floor_recall`` is the local search's recall of the exact top-k.

``--also-rps 50,100,150`` then measures each further rate for ``--also-seconds`` on the same
servers and adds them under ``at_rps``: the latency curve, where the rate at which a p99 target
still holds can be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


#: py-spy's frame: ``function (file:line)``.
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
#: The root frame py-spy's ``--subprocesses`` adds: ``process PID:"command line"``.
_PROCESS = re.compile(r'^process \d+:"')


def collapsed_stacks(text: str) -> list[tuple[list[str], int]]:
    """The samples of py-spy's ``--format raw`` output (Brendan Gregg's collapsed stacks): per
    line the frames root first, separated by ``;``, a space and the sample count. With
    ``--subprocesses`` the first frames are ``process PID:"command line"`` (the parent's, then
    the child's), dropped here, and a command line may span lines: a stack ends at the first
    line ending in a count."""
    out: list[tuple[list[str], int]] = []
    pending: list[str] = []
    for line in text.splitlines():
        pending.append(line)
        joined = "\n".join(pending)
        if _PROCESS.match(joined) and '";' not in joined:
            continue  # still inside the command line
        stack, _, count = joined.rpartition(" ")
        if not count.isdigit():
            continue
        pending = []
        while _PROCESS.match(stack):
            # The command line may hold ";": everything up to its closing quote is the frame.
            # A worker's frame follows its parent's (the gunicorn master's).
            stack = stack.partition('";')[2]
        out.append((stack.split(";") if stack else [], int(count)))
    return out


def _function(frame: str) -> tuple[str, str]:
    """(function with its file and no line number, the file) of a py-spy frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return f"{match['function']} ({match['file']})", match["file"]


def _package(file: str) -> str:
    """The top-level package (or module) a frame's file belongs to."""
    if not file:
        return "(native)"
    path = file.replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith("/"):
        parts = path.split("/")
        lib = next((n for n, p in enumerate(parts) if p.startswith("python3")), None)
        path = "/".join(parts[lib + 1 :]) if lib is not None else parts[-1]
    first = path.split("/", 1)[0]
    return first[:-3] if first.endswith(".py") else first


#: Frames (function, file ending) where a serving thread waits: py-spy ``--nonblocking`` cannot ask
#: the OS which threads run, and sampled these idle ones too (the request pool's queue, gunicorn's
#: poll, a gRPC call waiting for the Milvus server, with the GIL released).
WAITS = (
    ("_worker", "concurrent/futures/thread.py"),
    ("EpollSelector.select", "selectors.py"),
    ("PollSelector.select", "selectors.py"),
    ("_UnaryUnaryMultiCallable._blocking", "grpc/_channel.py"),
    ("Condition.wait", "threading.py"),
    ("Event.wait", "threading.py"),
    ("Queue.get", "queue.py"),
)


def _waiting(frame: str) -> bool:
    match = _FRAME.match(frame)
    return match is not None and any(
        match["function"] == function and match["file"].endswith(file) for function, file in WAITS
    )


def top_self(stacks: list[tuple[list[str], int]], n: int = 8) -> dict[str, Any]:
    """Where the samples were, by self time: ``waiting_share`` the samples whose innermost frame
    is a wait (:data:`WAITS`), then among the others (``busy_samples``) the ``n`` functions most
    often innermost (line numbers merged) and each package's share."""
    waiting = sum(count for frames, count in stacks if frames and _waiting(frames[-1]))
    total = sum(count for frames, count in stacks if frames) - waiting
    functions: dict[str, int] = {}
    packages: dict[str, int] = {}
    for frames, count in stacks:
        if not frames or _waiting(frames[-1]):
            continue
        function, file = _function(frames[-1])
        functions[function] = functions.get(function, 0) + count
        package = _package(file)
        packages[package] = packages.get(package, 0) + count

    def shares(counts: dict[str, int], limit: int) -> list[dict[str, Any]]:
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [{"name": k, "share": round(v / total, 3)} for k, v in ordered]

    return {
        "samples": total + waiting,
        "waiting_share": round(waiting / (total + waiting), 3) if total + waiting else 0.0,
        "busy_samples": total,
        "functions": shares(functions, n) if total else [],
        "packages": shares(packages, n) if total else [],
    }


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's fields in order: (number, varint value or length-delimited bytes);
    fixed-width fields are skipped (the pprof messages read here use none)."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if byte < 0x80:
                return value, at
            shift += 7

    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = varint(at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(at)
            out.append((number, value))
        elif wire == 2:
            size, at = varint(at)
            out.append((number, data[at : at + size]))
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {at}: not a pprof profile")
    return out


def _varints(value: int | bytes) -> list[int]:
    """A repeated varint field's values, packed (bytes) or not (one int)."""
    if isinstance(value, int):
        return [value]
    values, number, shift = [], 0, 0
    for byte in value:
        number |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(number)
            number = shift = 0
    return values


#: A sample whose innermost frame has no function name: native code (cgo, the C++ index).
NO_SYMBOL = "(native code, no symbol)"


def pprof_top(data: bytes, n: int = 8) -> dict[str, Any]:
    """Self time of a Go CPU profile (pprof's ``profile.proto``, gzipped as ``/debug/pprof/
    profile`` serves it) without Go's tools: the ``n`` functions most often at the top of the
    stack (an inlined call counts as the function inlined), with their share of CPU time."""
    import gzip

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings: list[str] = []
    types: list[int] = []
    samples: list[tuple[list[int], list[int]]] = []
    leaf_function: dict[int, int] = {}  # location id -> its innermost function id
    names: dict[int, int] = {}  # function id -> name's string index
    for number, value in _fields(data):
        if number == 6 and isinstance(value, bytes):
            strings.append(value.decode("utf-8", "replace"))
        elif number == 1 and isinstance(value, bytes):
            types.append(next((int(v) for f, v in _fields(value) if f == 1), 0))
        elif number == 2 and isinstance(value, bytes):
            locations: list[int] = []
            values: list[int] = []
            for f, v in _fields(value):
                if f == 1:
                    locations += _varints(v)
                elif f == 2:
                    values += _varints(v)
            samples.append((locations, values))
        elif number == 4 and isinstance(value, bytes):
            fields = _fields(value)
            ident = next((int(v) for f, v in fields if f == 1 and isinstance(v, int)), 0)
            lines = [v for f, v in fields if f == 4 and isinstance(v, bytes)]
            if lines:
                function = next((int(v) for f, v in _fields(lines[0]) if f == 1), 0)
                leaf_function[ident] = function
        elif number == 5 and isinstance(value, bytes):
            fields = _fields(value)
            ident = next((int(v) for f, v in fields if f == 1 and isinstance(v, int)), 0)
            names[ident] = next((int(v) for f, v in fields if f == 2 and isinstance(v, int)), 0)
    # The CPU time column ("cpu", nanoseconds) when named, else the last one.
    cpu = next((i for i, t in enumerate(types) if t < len(strings) and strings[t] == "cpu"), None)
    column = len(types) - 1 if cpu is None else cpu
    by_function: dict[str, int] = {}
    total = 0
    for locations, values in samples:
        if not locations or not values:
            continue
        value = values[column] if 0 <= column < len(values) else values[-1]
        total += value
        index = names.get(leaf_function.get(locations[0], -1), -1)
        name = strings[index] if 0 < index < len(strings) else NO_SYMBOL
        by_function[name] = by_function.get(name, 0) + value
    ordered = sorted(by_function.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    shares = [{"name": k, "share": round(v / total, 3)} for k, v in ordered] if total else []
    return {"cpu_s": None if cpu is None else round(total / 1e9, 2), "functions": shares}


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


#: What the JSON line shows of the profiled load (its latencies include the profiler's work) and
#: the profiles' own figures.
PROFILED_KEYS = (
    "achieved_rps",
    "p50_ms",
    "p99_ms",
    "degraded",
    "cpu_ms_per_request",
    "cpu_ms_total",
)
PROFILE_KEYS = (
    "serving_profile",
    "profile_top",
    "milvus_profile",
    "milvus_profile_top",
    "profiler_cpu_ms_per_request",
)
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


#: The load generator: its CPU is the bench's, not what serving costs.
CLIENT = "bench_client"


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
    out[CLIENT] = own.user + own.system
    return out


class Profiles:
    """Profiles of one load, saved in ``folder``: py-spy samples the serving workers
    (``--subprocesses`` on the gunicorn master) into ``serving-pyspy.txt`` (collapsed stacks:
    flamegraph.pl or https://www.speedscope.app draws them), and the Milvus server's Go CPU
    profile over ``seconds`` is fetched from its pprof endpoint into ``milvus-cpu.pprof``
    (``go tool pprof -top milvus-cpu.pprof`` reads it).

    py-spy runs ``--nonblocking``: it never pauses a worker, so the workers' CPU stays theirs.
    Paused (its default), it counted threads waiting on a queue or in ``select`` as busy in a
    test process; unpaused it left them out."""

    def __init__(
        self, folder: Path, serving_pid: int, pprof_url: str | None, seconds: float, rate: int
    ) -> None:
        self.folder = folder
        self.serving_pid = serving_pid
        self.pprof_url = pprof_url
        self.seconds = seconds
        self.rate = rate
        self._spy: Any = None
        self._fetch: threading.Thread | None = None
        self._pprof_error: str | None = None

    def start(self) -> None:
        import shutil
        import subprocess

        self.folder.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        found = str(spy) if spy.is_file() else shutil.which("py-spy")
        if found is None:
            raise SystemExit(
                f"py-spy is not installed beside {sys.executable}: install the lock "
                "(requirements.txt) or run with --no-profile"
            )
        log = (self.folder / "py-spy.log").open("w")
        self._spy = subprocess.Popen(
            [
                found,
                "record",
                "--pid",
                str(self.serving_pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--output",
                str(self.folder / "serving-pyspy.txt"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if self.pprof_url:
            self._fetch = threading.Thread(target=self._fetch_pprof, daemon=True)
            self._fetch.start()

    def _fetch_pprof(self) -> None:
        import urllib.request

        url = f"{self.pprof_url}/debug/pprof/profile?seconds={max(1, round(self.seconds))}"
        try:
            with urllib.request.urlopen(url, timeout=self.seconds + 60) as resp:
                (self.folder / "milvus-cpu.pprof").write_bytes(resp.read())
        except OSError as exc:
            self._pprof_error = f"{url}: {exc}"

    def stop(self) -> dict[str, Any]:
        """Stop py-spy (it writes its file on SIGINT) and wait for the Go profile; the summary
        of the serving workers' samples (:func:`top_self`), the files, and py-spy's own CPU
        time (it shares the machine's cores with the servers it samples)."""
        import signal

        import psutil

        out: dict[str, Any] = {}
        if self._spy is not None:
            try:
                times = psutil.Process(self._spy.pid).cpu_times()
                out["profiler_cpu_s"] = round(times.user + times.system, 2)
            except psutil.Error:
                pass
            self._spy.send_signal(signal.SIGINT)
            try:
                self._spy.wait(timeout=60)
            except Exception:  # noqa: BLE001 - a stuck profiler must not keep the bench
                self._spy.kill()
                self._spy.wait()
            raw = self.folder / "serving-pyspy.txt"
            if raw.is_file():
                out["serving_profile"] = str(raw)
                out["profile_top"] = top_self(collapsed_stacks(raw.read_text(errors="replace")))
            else:
                out["serving_profile"] = f"py-spy wrote nothing (see {self.folder}/py-spy.log)"
        if self._fetch is not None:
            self._fetch.join(timeout=self.seconds + 90)
            pprof = self.folder / "milvus-cpu.pprof"
            out["milvus_profile"] = str(pprof) if pprof.is_file() else self._pprof_error
            if pprof.is_file():
                try:
                    out["milvus_profile_top"] = pprof_top(pprof.read_bytes())
                except (ValueError, IndexError, OSError) as exc:
                    out["milvus_profile_top"] = f"unreadable ({exc}): use go tool pprof -top"
        return out


def cpu_total(per_request: dict[str, float]) -> float:
    """CPU per request of every process but the load generator's (:data:`CLIENT`)."""
    return round(sum(ms for name, ms in per_request.items() if name != CLIENT), 2)


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


class LocalIndex:
    """The items in an in-process HNSW graph (faiss, inner product, the serving index's M and
    ef), searched by the calling thread alone: the floor's search."""

    def __init__(self, ids: list[str], emb: np.ndarray, m: int, ef_construction: int, ef: int):
        import faiss

        t0 = time.monotonic()
        self.ids = ids
        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(emb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(np.ascontiguousarray(emb, dtype=np.float32))
        self.index.hnsw.efSearch = ef
        self.ef = ef
        self.name = f"faiss HNSW M{m} efC{ef_construction} ef{ef}"
        self.build_s = time.monotonic() - t0

    def search(
        self, vectors: np.ndarray, k: int, timeout_s: float | None = None
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` by inner product, as :meth:`VectorIndex.search` answers (ef raised to k)."""
        self.index.hnsw.efSearch = max(self.ef, k)
        scores, rows = self.index.search(np.atleast_2d(vectors).astype(np.float32), k)
        return [
            [(self.ids[r], float(v)) for r, v in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows, scores, strict=True)
        ]


def floor_index(
    settings: Any, ids: list[str], emb: np.ndarray, ef_construction: int
) -> Callable[[], LocalIndex]:
    """Start building the floor's :class:`LocalIndex` (serving's M and ef) in a thread, while
    the bench waits for the Milvus server to settle; the returned call waits for it."""
    from lambdarec.retrieval.index import IndexConfig

    config = IndexConfig.from_settings(settings)
    built: list[LocalIndex] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            built.append(LocalIndex(ids, emb, config.m, ef_construction, config.ef))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=build, name="floor-index", daemon=True)
    thread.start()

    def wait() -> LocalIndex:
        thread.join()
        if failed:
            raise failed[0]
        return built[0]

    return wait


def floor(
    settings: Any,
    ids: list[str],
    emb: np.ndarray,
    users: list[str],
    local: LocalIndex,
    *,
    k: int,
) -> dict[str, Any]:
    """The bare work of each request, in this process on one thread, for ``users``' queries
    (their sessions as the load asked for them) over the same items: the online-store read
    serving makes (:class:`serving.stores.FeastFeatures`), the champion's query tower, an
    in-process HNSW search of the pipeline's first fetch (:class:`LocalIndex`), and the
    ranker's pass over the candidates the pipeline's sources give that query (found untimed,
    with the same sources and the local index). CPU time per part (``time.process_time``: every
    thread of this process, though each part runs on this one); the floor is the sum of the
    parts' medians. Also the local search's recall of the exact top-``fetch`` (numpy), so a
    cheap floor is not a worse search."""
    from threadpoolctl import threadpool_limits

    from lambdarec.recommend.pipeline import FETCH_MIN, Pipeline
    from lambdarec.recommend.ranking import score_with
    from lambdarec.recommend.snapshot import Snapshot
    from lambdarec.recommend.types import Query
    from lambdarec.retrieval.index import exact_search
    from serving.champion import load_champion
    from serving.stores import FeastFeatures

    models = load_champion(settings)
    if models is None or models.encoder is None or models.ranker is None:
        raise SystemExit("the floor needs the champion's query tower and ranker: none loaded")
    features_reader = FeastFeatures(settings)
    pipeline = Pipeline(
        Snapshot.from_lake(settings),
        features=features_reader,
        index=local,
        sources=settings.candidate_sources_list,
    )
    fetch = max(FETCH_MIN, 3 * k)
    parts: dict[str, list[float]] = {"features": [], "query_tower": [], "search": [], "ranker": []}
    candidates: list[int] = []
    vectors = []
    found: list[set[str]] = []
    local.faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):  # serving's BLAS runs one thread per request thread
        for n, user in enumerate([*users[:20], *users]):
            warm = n < 20  # first touches: the store's connection, the model's pages
            t = time.process_time()
            features = features_reader.context(user, f"b-{user}")
            t_features = time.process_time()
            vector = models.encoder.encode(features)
            t_tower = time.process_time()
            hits = local.search(vector, fetch)
            t_search = time.process_time()
            _, survivors = pipeline.candidates(Query(user, f"b-{user}", k), models)
            t_ranker = time.process_time()
            score_with(models.ranker, features, survivors)
            t_end = time.process_time()
            if warm:
                continue
            parts["features"].append((t_features - t) * 1000)
            parts["query_tower"].append((t_tower - t_features) * 1000)
            parts["search"].append((t_search - t_tower) * 1000)
            parts["ranker"].append((t_end - t_ranker) * 1000)
            candidates.append(len(survivors))
            vectors.append(np.atleast_2d(vector)[0])
            found.append({item for item, _ in hits[0]})
    queries = np.asarray(vectors, dtype=np.float32)
    overlap = 0
    for start in range(0, len(queries), 25):  # bounded temporaries: 25 x items scores
        exact = exact_search(emb, ids, queries[start : start + 25], fetch)
        for got, truth in zip(found[start : start + 25], exact, strict=True):
            overlap += len(got & {item for item, _ in truth})
    medians = {name: round(float(np.median(v)), 3) for name, v in parts.items()}
    return {
        "floor_cpu_ms": round(sum(medians.values()), 3),
        "floor_parts_ms": medians,
        "floor_parts_mean_ms": {name: round(float(np.mean(v)), 3) for name, v in parts.items()},
        "floor_queries": len(users),
        "floor_candidates_median": int(np.median(candidates)),
        "floor_index": f"{local.name}, top {fetch}",
        "floor_index_build_s": round(local.build_s, 1),
        "floor_recall": round(overlap / (fetch * len(found)), 4),
    }


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
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="where the profiled load's profiles go (default: "
        "<state_dir>/reports/bench-serving/<UTC time>/); printed as profile_dir",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="no profiles (py-spy cannot attach here)"
    )
    parser.add_argument("--profile-rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=30.0,
        help="the profiled load's length (at --rps, after the main one)",
    )
    parser.add_argument(
        "--floor-queries", type=int, default=300, help="queries the floor is timed on"
    )
    parser.add_argument(
        "--floor-ef-construction",
        type=int,
        default=64,
        help="the floor's HNSW build-time list (the search's ef is serving's; a lower build "
        "list only builds faster, the floor_recall shows what it costs)",
    )
    args = parser.parse_args()
    if args.floor_queries < 1:
        parser.error(f"--floor-queries {args.floor_queries}: at least 1 query is needed")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.profile_dir is None and not args.no_profile:
        from datetime import UTC, datetime

        from lambdarec.config import get_settings

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        args.profile_dir = get_settings().reports_dir / "bench-serving" / stamp

    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="lambdarec-bench-serving-"))
    try:
        print(json.dumps(run(args, work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import multiprocessing
    from urllib.parse import urlsplit

    import pyarrow as pa
    import requests

    from lambdarec.data import lake
    from lambdarec.features.store import apply
    from lambdarec.harness.platform import private_platform
    from lambdarec.harness.waiting import eventually
    from lambdarec.platform import manager
    from lambdarec.platform.stores import MILVUS_METRICS_PORT

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
        local = floor_index(settings, ids, emb, args.floor_ef_construction)
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
            local()  # built before any load: its threads would take the cores measured
            load(f"{base}/recommend", 20, 10, 4, users)  # warm-up (JIT, caches, Milvus segments)
            require_models(f"{base}/recommend", users)
            processes = ["serving", "kafka", *(["milvus"] if args.milvus == "server" else [])]

            def measure(
                rps: float, seconds: float, profiles: Profiles | None = None
            ) -> dict[str, Any]:
                cpu_before = cpu_seconds(settings, processes)
                print(f"measuring: {rps:g} req/s for {seconds:g} s", file=sys.stderr)
                if profiles is not None:
                    profiles.start()
                out = load(f"{base}/recommend", rps, seconds, args.clients, users)
                cpu_after = cpu_seconds(settings, processes)
                out["cpu_ms_per_request"] = {
                    name: round((cpu_after[name] - cpu_before[name]) * 1000 / out["requests"], 2)
                    for name in cpu_after
                    if name in cpu_before and out["requests"]
                }
                out["cpu_ms_total"] = cpu_total(out["cpu_ms_per_request"])
                if profiles is not None:
                    spied = profiles.stop()
                    spy_s = spied.pop("profiler_cpu_s", None)
                    if spy_s is not None and out["requests"]:
                        spied["profiler_cpu_ms_per_request"] = round(
                            spy_s * 1000 / out["requests"], 2
                        )
                    out.update(spied)
                return out

            result = measure(args.rps, args.seconds)
            if args.profile_dir is not None:
                # A load of its own: py-spy takes about half a core at 100 samples/s (200k items,
                # 100 req/s), and the main load's latencies would measure it too.
                serving_pid = int(json.loads((settings.run_dir / "serving.pid").read_text())["pid"])
                pprof = None
                if args.milvus == "server":
                    host = urlsplit(str(settings.milvus_uri)).hostname
                    pprof = f"http://{host}:{MILVUS_METRICS_PORT}"
                profiles = Profiles(
                    args.profile_dir, serving_pid, pprof, args.profile_seconds, args.profile_rate
                )
                profiled = measure(args.rps, args.profile_seconds, profiles)
                result["profiled_load"] = {key: profiled[key] for key in PROFILED_KEYS}
                result.update({k: v for k, v in profiled.items() if k in PROFILE_KEYS})
                result["profile_dir"] = str(args.profile_dir)
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
                            "cpu_ms_total",
                        )
                    }
            # Kept should the floor fail: the loads took most of the run.
            print(f"the loads: {json.dumps(result)}", file=sys.stderr)
            print(f"timing the floor on {args.floor_queries} queries", file=sys.stderr)
            result.update(floor(settings, ids, emb, users[: args.floor_queries], local(), k=10))
            if result["floor_cpu_ms"] > 0:
                result["floor_ratio"] = round(result["cpu_ms_total"] / result["floor_cpu_ms"], 2)
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
