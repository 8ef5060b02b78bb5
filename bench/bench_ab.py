"""A/B benchmark: does the readout detect a better policy, and does it keep quiet on an A/A?

Issue #22's acceptance, measured: simulated shoppers (:mod:`lambdarec.simulate`: the synthetic
generator's users with its hidden preferences and position bias) browse the real serving app
through its HTTP API, and the A/B readout's own statistics (:func:`lambdarec.monitoring.ab.readout`,
the delta-method tests the ``online_metrics`` job runs) are computed from what the simulator saw.

What it builds, on a throwaway platform (a private Kafka broker for ``/events`` and the
impressions; the Feast online store on SQLite; the index a Milvus Lite file):

* the demo's data: the seeded synthetic clickstream (``--users``, ``--items``, ``--days``,
  ``--data-seed``: the demo's 2,000 / 5,000 / 5 / 42) and its catalog in the lake;
* the batch layer's tables for every day (the DuckDB reference of the daily Spark job, the same
  rows) materialised into the online store, so a returning shopper's recent items are online;
* the champion: the two-tower and the DeepFM trained by the retraining's own steps
  (``lambdarec.models.retrain``: build, train_retriever, train_ranker) on that lake, the
  two-tower's item embeddings published to the index and its export pinned with
  ``LAMBDAREC_SERVING_MODEL_DIR`` (no MLflow registry: its evaluation gate is not what is
  measured here, and the pinned pair is what it would promote);
* ``gunicorn 'serving:create_app()'`` as the platform runs it, restarted per phase with that
  phase's ``LAMBDAREC_AB_VARIANTS`` and ``LAMBDAREC_AB_POLICIES``. No speed layer: a shopper's
  clicks do not reach its session features, so the pipeline personalises from the user's recent
  items (the batch layer's ``user_recent_items``), the returning-user path.

Two phases, each variant 50% of the users by serving's hash:

* **detection**: ``control`` runs ``popular`` (the popularity baseline), ``treatment`` the
  champion (``pipeline``), ``--shoppers`` shoppers for ``--minutes`` at ``--rps`` requests a
  second (all requests: lists and events; default: the demo's budget,
  ``lambdarec.simulate.DEMO_*``). ``detected``: CTR@10's two-sided p-value below ``--alpha``
  with the treatment above control.
* **A/A**: ``a`` and ``b`` both run ``pipeline``; ``--aa-seeds`` runs, each with its own seed:
  the seed draws the shoppers (which of the data's users, by activity), and every choice they
  make, and serving's assignment salt (``LAMBDAREC_AB_SALT``, serving restarted per seed), so
  every seed is a new experiment with its own split of the users. Each run lasts
  ``--aa-minutes`` at ``--aa-rps`` (default 1.5 min at 40/s: the demo's 3,600 requests in half
  its time, since 20 runs of the demo's 3 minutes would take an hour; the requests achieved are reported, and fewer lists per run would be the
  harder case for the test's calibration, whose normal approximation improves with more users).
  ``aa_flags_ctr`` and ``aa_flags_conversion`` count the runs whose p-value is below ``--alpha``,
  whatever the readout's minimum sample says.

And, with ``--exposure``, a third (issue #22 item 5: impressions without clicks as the ranker's
negatives, measured live):

* **exposure**: serving runs the champion alone (``control:100``) for ``--shoppers`` shoppers,
  ``--minutes`` at ``--rps``; the lists it answered and the events the shoppers posted from them
  (what serving logged as impressions and attribution would join, as the simulated client saw
  them) become an exposure table (:func:`lambdarec.models.exposure.exposure_table`). The lake's
  data ends before the live run, so each user's lists are placed, in the order served, a
  millisecond before that user's training queries in time order (:func:`live_exposure`). The
  retraining's ``train_ranker`` on a copy of the champion's run, with the champion's DeepFM
  configuration and seed, attaches them (:func:`lambdarec.models.exposure.attach_exposure`: the
  position a training-only field) and exports the exposure DeepFM. Then an A/B with its own
  salt, the same shoppers (the logged run's population seed) and new choices: ``control`` the
  champion, ``treatment`` the same pipeline ranked by the exposure DeepFM
  (``LAMBDAREC_AB_RANKERS=treatment:<its deepfm/>``), read out as the detection phase is; per
  metric ``exposure_ranker`` says ``wins``/``loses`` when the lift's 95% interval excludes 0,
  else ``ties``.

Per-user rows: for each (variant, user) the simulator's record (``Summary.user_rows``): lists,
items shown, clicks from a list, carts and purchases of a clicked item, revenue (the purchases'
prices); the variant is the one each answer named. Metrics reported: ``ctr_at_k`` (clicks at
positions < 10 per item shown there) and ``conversion`` (purchases per list), each variant's
value, the lift with its interval and the p-value; the simulator's own CTR per list beside them.

Prints one JSON line: {"budget", "detection": {"detected", "ctr", "conversion", ...},
"aa": {"seeds", "aa_flags_ctr", "aa_flags_conversion", "p_ctr", "p_conversion", ...},
"exposure": {"ctr", "conversion", "training", "logging", "rankers", ...} with --exposure,
"setup_s", "elapsed_s"}; progress bars and timed steps on stderr, serving's log tail on failure.
``--quick`` runs a small version for the tests (the demo's data, one epoch; 200 shoppers for
one minute at 40/s; 2 A/A seeds of 10 s, each with its own salt; about 3 minutes; the exposure
phase, two more runs of that minute and a DeepFM epoch, about 3 more). ``--skip detection --skip
aa --exposure`` runs the exposure phase alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.simulate import DEMO_MINUTES, DEMO_RPS, DEMO_SHOPPERS

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from lambdarec.config import Settings
    from lambdarec.data.generator import GeneratorConfig
    from lambdarec.models.data import Dataset, Examples
    from lambdarec.simulate import Answer, Summary

#: Parts that, listed as degraded on a ``pipeline`` answer, mean the champion is not serving.
MODEL_PARTS = ("model", "ranker")
#: The metrics the benchmark reports (names of lambdarec.monitoring.ab.METRICS).
REPORTED = ("ctr_at_k", "conversion")
#: Seeds of the A/A runs start here (the detection run uses --seed).
AA_SEED_BASE = 1000

START = time.monotonic()


def say(message: str) -> None:
    print(f"[bench-ab {time.monotonic() - START:6.0f} s] {message}", file=sys.stderr, flush=True)


def step(title: str, fn: Callable[[], Any]) -> Any:
    say(f"{title} ...")
    t0 = time.monotonic()
    out = fn()
    say(f"{title}: done in {time.monotonic() - t0:.0f} s")
    return out


# -- the platform's data, features and champion ------------------------------------------------
def write_data(settings: Settings, config: GeneratorConfig) -> list[str]:
    """The generated clickstream and catalog in the lake; the days written."""
    from lambdarec.data import lake
    from lambdarec.data.generator import ClickstreamGenerator

    gen = ClickstreamGenerator(config)
    lake.write_catalog(gen.catalog_table(), settings.lake_dir)
    days = lake.write_events(gen.iter_tables(), settings.lake_dir)
    say(f"{sum(lake.date_counts(settings.lake_dir).values()):,} events, {days[0]} .. {days[-1]}")
    return [d.isoformat() for d in days]


def online_features(settings: Settings, days: list[str]) -> None:
    """Every day's batch tables (the DuckDB reference of the daily Spark job), materialised."""
    from lambdarec.batch import duckdb_reference
    from lambdarec.features import store

    con = duckdb_reference.connect(threads=2)
    for day in days:
        duckdb_reference.write(settings.lake_dir, day, settings.lake_dir / "features", con=con)
    store.apply(settings)
    # Each day's rows are stamped the next midnight (when they became knowable).
    first = datetime.fromisoformat(days[0]).replace(tzinfo=UTC)
    last = datetime.fromisoformat(days[-1]).replace(tzinfo=UTC) + timedelta(days=1, minutes=1)
    store.materialize(first, last, settings)


def train(settings: Settings, run_dir: Path, epochs: int) -> None:
    """The retraining's own steps on the lake: dataset, two-tower, DeepFM on its candidates."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from lambdarec.models import retrain
    from lambdarec.models.deepfm import SERVING_EXPORT, DeepFMConfig
    from lambdarec.models.two_tower import TwoTowerConfig

    retrain.build("lake", run_dir, settings=settings)
    retrain.train_retriever(run_dir, TwoTowerConfig(epochs=epochs))
    retrain.train_ranker(run_dir, DeepFMConfig(epochs=epochs))
    if not (run_dir / "deepfm" / SERVING_EXPORT / "ranker.json").is_file():
        raise SystemExit(f"{run_dir}/deepfm holds no serving export: serving would not rank")


def publish(settings: Settings, run_dir: Path) -> None:
    """The two-tower's item embeddings behind the index alias, with the export step's category
    codes. Run in a child process: Milvus Lite keeps its file locked until the process that
    opened it exits, and serving must open it next."""
    from lambdarec.models import retrain
    from lambdarec.retrieval.index import VectorIndex

    data = retrain.load_built(run_dir)
    saved = np.load(run_dir / "two_tower" / "item_embeddings.npz")
    ids = [str(i) for i in saved["ids"]]
    categories = [str(c) for c in data.catalog.category]
    with VectorIndex.from_settings(settings) as index:
        index.publish(ids, saved["embeddings"], categories, progress=False)


def publish_in_child(settings: Settings, run_dir: Path) -> None:
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=publish, args=(settings, run_dir))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"publishing the index failed (exit {child.exitcode})")


# -- serving per phase -----------------------------------------------------------------------
def _get(url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    import requests

    resp = requests.get(url, params=params, timeout=30)
    body = resp.json()
    return body if isinstance(body, dict) else {}


def start_serving(
    settings: Settings, variants: str, policies: str, salt: str | None = None, rankers: str = ""
) -> str:
    """gunicorn with these A/B settings (``rankers``: ``LAMBDAREC_AB_RANKERS``), answering with
    the champion loaded; its URL."""
    from lambdarec.harness.waiting import eventually
    from lambdarec.platform import manager

    update = {"ab_variants": variants, "ab_policies": policies, "ab_rankers": rankers}
    phase = settings.model_copy(update=update | ({"ab_salt": salt} if salt else {}))
    manager.up(["serving"], settings=phase, timeout_s=300)
    base = f"http://{phase.bind_host}:{phase.serving_port}"
    last: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal last
        try:
            last = _get(f"{base}/ready").get("checks") or {}
        except (OSError, ValueError) as exc:
            last = {"error": str(exc)[:200]}
            return False
        return all(last.get(name) == "ok" for name in ("warm_up", "online_store", "index"))

    eventually(ready, 600, interval_s=1, message=lambda: f"serving ready (last: {last})")
    # The champion loads in the background: until then pipeline answers name it as degraded.
    # Probe users outside the data (they never meet a shopper) until one lands in each variant.
    missing: dict[str, int] = {}

    def champion_serves() -> bool:
        nonlocal missing
        missing, policies_seen = {}, set()
        for n in range(16):
            body = _get(f"{base}/recommend", {"user_id": f"bench-probe-{n}", "k": 10})
            policies_seen.add(body.get("policy"))
            if body.get("policy") == "pipeline":
                for part in set(body.get("degraded_parts") or ()) & set(MODEL_PARTS):
                    missing[part] = missing.get(part, 0) + 1
        return "pipeline" in policies_seen and not missing

    eventually(
        champion_serves,
        300,
        interval_s=2,
        message=lambda: f"the champion serving pipeline answers (still degraded: {missing})",
    )
    return base


def stop_serving(settings: Settings) -> None:
    from lambdarec.platform import manager

    manager.down(["serving"], settings=settings)


def serving_log_tail(settings: Settings, lines: int = 40) -> None:
    log_file = settings.log_dir / "serving.log"
    if log_file.is_file():
        tail = log_file.read_text(errors="replace").splitlines()[-lines:]
        print("--- serving.log\n" + "\n".join(line[:300] for line in tail), file=sys.stderr)


class Watch:
    """The simulator's HTTP transport, counting what ``/recommend`` answered per policy: lists,
    degraded answers and the parts they named (the simulator itself does not keep those)."""

    def __init__(self, *, record: bool = False) -> None:
        from lambdarec.simulate import requests_transport

        self.send = requests_transport()
        self.lock = threading.Lock()
        self.lists: Counter[str] = Counter()
        self.degraded: Counter[str] = Counter()
        self.parts: dict[str, Counter[str]] = {}
        #: Lists per ``(variant, ranker)`` the answers named.
        self.rankers: Counter[tuple[str, str]] = Counter()
        #: The parts degraded answers named, per variant (a slow ranker degrades its own).
        self.variant_parts: dict[str, Counter[str]] = {}
        #: With ``record``: each list shown, ``(request_id, user_id, [(item_id, position)])``,
        #: in the order answered, and each event posted from a list, ``(request_id, item_id,
        #: event_type)``: the impressions serving logged and what came of them, as the
        #: simulated client saw them.
        self.record = record
        self.shown: list[tuple[str, str, list[tuple[str, int]]]] = []
        self.acted: list[tuple[str, str, str]] = []

    def __call__(self, method: str, url: str, *args: Any) -> Answer:
        answer = self.send(method, url, *args)
        body = answer.body
        if self.record and url.endswith("/events") and 200 <= answer.status < 300:
            event = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
            rid = (event.get("context") or {}).get("request_id")
            if rid:
                with self.lock:
                    self.acted.append((str(rid), str(event["item_id"]), str(event["event_type"])))
        if url.endswith("/recommend") and answer.status == 200 and isinstance(body, dict):
            policy = str(body.get("policy"))
            with self.lock:
                self.lists[policy] += 1
                variant = str(body.get("variant"))
                self.rankers[(variant, str(body.get("ranker")))] += 1
                if body.get("degraded"):
                    self.variant_parts.setdefault(variant, Counter()).update(
                        body.get("degraded_parts") or ()
                    )
                if self.record:
                    items = [(str(i["item_id"]), int(i["position"])) for i in body["items"]]
                    self.shown.append((str(body["request_id"]), str(body["user_id"]), items))
                if body.get("degraded"):
                    self.degraded[policy] += 1
                    self.parts.setdefault(policy, Counter()).update(
                        body.get("degraded_parts") or ()
                    )
        return answer

    def as_dict(self) -> dict[str, Any]:
        return {
            policy: {
                "lists": n,
                "degraded": self.degraded[policy],
                "degraded_parts": dict(self.parts.get(policy, {})),
            }
            for policy, n in sorted(self.lists.items())
        }


# -- the readout -----------------------------------------------------------------------------
def simulate(
    base: str,
    config: GeneratorConfig,
    shoppers: int,
    minutes: float,
    rps: float,
    seed: int,
    threads: int,
    *,
    population_seed: int | None = None,
    record: bool = False,
) -> tuple[Summary, Watch]:
    """A run of ``shoppers`` (drawn with ``population_seed``, default ``seed``) against
    ``base``; ``record`` keeps the lists shown and the events from them (:class:`Watch`)."""
    from lambdarec.simulate import Population, run

    population = Population.from_config(
        config, shoppers, seed=seed if population_seed is None else population_seed
    )
    watch = Watch(record=record)
    summary = run(
        population,
        base_url=base,
        minutes=minutes,
        rps=rps,
        seed=seed,
        threads=threads,
        transport=watch,
    )
    if summary.errors:
        say(f"errors by status: {dict(summary.errors)}")
    return summary, watch


def read_out(summary: Summary, control: str, treatment: str, min_lists: int) -> dict[str, Any]:
    """The readout's period section for ``treatment`` vs ``control`` from the simulator's rows:
    per reported metric, each variant's value, the lift and its interval, the p-value."""
    import pandas as pd

    from lambdarec.monitoring.ab import readout

    rows = pd.DataFrame(summary.user_rows())
    if rows.empty or set(rows["variant"]) != {control, treatment}:
        seen = sorted(set(rows["variant"])) if not rows.empty else []
        raise SystemExit(f"the run served variants {seen}, expected {control} and {treatment}")
    rows["day"] = datetime.now(UTC).date().isoformat()
    result = readout(rows, control=control, variants=[control, treatment], min_lists=min_lists)
    period = result["period"]
    test = period["tests"][treatment]
    out: dict[str, Any] = {"enough_data": test["enough_data"], "min_lists": min_lists}
    for name in REPORTED:
        t = test["metrics"][name]
        out[name] = {
            control: period["variants"][control]["metrics"][name]["value"],
            treatment: period["variants"][treatment]["metrics"][name]["value"],
            "lift": t["lift"],
            "lift_ci": t["lift_ci"],
            "p_value": t["p_value"],
            "verdict": t["verdict"],
        }
    out["variants"] = {
        v: {
            key: period["variants"][v][key]
            for key in ("users", "lists", "impressions", "clicks", "carts", "purchases", "revenue")
        }
        | {"ctr_per_list": round(summary.variants[v].ctr, 4)}
        for v in (control, treatment)
    }
    return out


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def detection(
    settings: Settings, config: GeneratorConfig, args: argparse.Namespace
) -> dict[str, Any]:
    base = start_serving(settings, "control:50,treatment:50", "control:popular,treatment:pipeline")
    try:
        summary, watch = simulate(
            base, config, args.shoppers, args.minutes, args.rps, args.seed, args.threads
        )
    finally:
        stop_serving(settings)
    out = read_out(summary, "control", "treatment", settings.ab_min_lists)
    ctr = out["ctr_at_k"]
    out["detected"] = bool(
        ctr["p_value"] is not None and ctr["p_value"] < args.alpha and (ctr["lift"] or 0) > 0
    )
    out["sessions"], out["lists"] = summary.sessions, summary.lists
    out["requests"] = summary.lists + sum(summary.events.values())
    out["seconds"] = round(summary.seconds, 1)
    out["errors"] = dict(summary.errors)
    out["answers"] = watch.as_dict()
    say(
        f"detection: CTR@10 control {ctr['control']:.4f} vs treatment {ctr['treatment']:.4f} "
        f"(lift {ctr['lift']:+.1%}, p={ctr['p_value']:.2g}); detected={out['detected']}"
    )
    return out


def aa(settings: Settings, config: GeneratorConfig, args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    answers: dict[str, Any] = {}
    for n in range(args.aa_seeds):
        seed = AA_SEED_BASE + n
        # Each seed is a new experiment: its own assignment salt re-randomises the split.
        base = start_serving(settings, "a:50,b:50", "a:pipeline,b:pipeline", salt=f"aa-{seed}")
        try:
            summary, watch = simulate(
                base, config, args.shoppers, args.aa_minutes, args.aa_rps, seed, args.threads
            )
        finally:
            stop_serving(settings)
        out = read_out(summary, "a", "b", settings.ab_min_lists)
        p_ctr, p_conv = out["ctr_at_k"]["p_value"], out["conversion"]["p_value"]
        runs.append(
            {
                "seed": seed,
                "lists": summary.lists,
                "users": {v: out["variants"][v]["users"] for v in ("a", "b")},
                "p_ctr": p_ctr,
                "p_conversion": p_conv,
                "lift_ctr": out["ctr_at_k"]["lift"],
                "errors": sum(summary.errors.values()),
            }
        )
        for policy, counts in watch.as_dict().items():
            mine = answers.setdefault(policy, {"lists": 0, "degraded": 0})
            mine["lists"] += counts["lists"]
            mine["degraded"] += counts["degraded"]
        say(
            f"A/A seed {n + 1}/{args.aa_seeds}: {summary.lists} lists, "
            f"p(CTR@10)={p_ctr:.3f}, p(conversion)={p_conv:.3f}"
        )

    def flags(key: str) -> int:
        return sum(r[key] is not None and r[key] < args.alpha for r in runs)

    return {
        "seeds": len(runs),
        "minutes_per_seed": args.aa_minutes,
        "rps": args.aa_rps,
        "aa_flags_ctr": flags("p_ctr"),
        "aa_flags_conversion": flags("p_conversion"),
        "target_max_flags": 2,
        "p_ctr": [_round(r["p_ctr"], 4) for r in runs],
        "p_conversion": [_round(r["p_conversion"], 4) for r in runs],
        "lists_per_seed_median": float(np.median([r["lists"] for r in runs])) if runs else None,
        "errors": sum(r["errors"] for r in runs),
        "answers": answers,
        "runs": runs,
    }


# -- exposure: the ranker trained on the champion's impressions, live against the champion -----
def live_exposure(
    watch: Watch, data: Dataset, queries: Examples
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The exposure table (:func:`lambdarec.models.exposure.exposure_table`) of the lists
    ``watch`` recorded and the events posted from them, placed on the ranker's training queries.

    The lake's data ends before the live run, so no training query follows a live list in time:
    each user's lists, in the order served, are stamped a millisecond before that user's
    training queries in time order (the first list before the first query, ...), the rest of a
    user's lists left out. What is kept is what the exposure signal is: which items the champion
    showed the shopper, where, and which one the shopper clicked (their preferences do not
    change with time); the list is attached to a query whose history is the user's past, not
    the live session's."""
    import pandas as pd

    from lambdarec.models.exposure import exposure_table

    by_user: dict[str, list[int]] = {}
    for q in np.argsort(queries.ts, kind="stable").tolist():
        if int(queries.user[q]) > 0:
            by_user.setdefault(str(data.user_ids[int(queries.user[q]) - 1]), []).append(q)
    used: Counter[str] = Counter()
    stamped: dict[str, int] = {}
    shown: list[tuple[str, int, str, str, int]] = []
    for rid, user, items in watch.shown:
        slots = by_user.get(user, [])
        if not items or used[user] >= len(slots):
            continue
        ts = int(queries.ts[slots[used[user]]]) - 1
        used[user] += 1
        stamped[rid] = ts
        shown += [(rid, ts, user, item, position) for item, position in items]
    # An event keeps its order after its list (the first click is the positive).
    outcomes = [
        (rid, item, stamped[rid] + 1 + n, kind)
        for n, (rid, item, kind) in enumerate(watch.acted)
        if rid in stamped
    ]
    impressions = pd.DataFrame(
        shown, columns=["request_id", "ts", "user_id", "item_id", "position"]
    )
    attributed = pd.DataFrame(outcomes, columns=["request_id", "item_id", "event_ts", "event_type"])
    placed = {
        "lists_logged": len(watch.shown),
        "events_logged": len(watch.acted),
        "lists_placed": len(stamped),
        "users_placed": len(used),
        "events_placed": len(outcomes),
    }
    return exposure_table(impressions, attributed), placed


def train_exposure(
    settings: Settings, run_dir: Path, exposure_dir: Path, watch: Watch, epochs: int
) -> dict[str, Any]:
    """The exposure DeepFM: the champion's run copied to ``exposure_dir`` (its dataset and
    two-tower), the retraining's ``train_ranker`` with the champion's configuration and seed on
    the same queries, the live impressions attached; exported to ``exposure_dir/deepfm``."""
    import shutil

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from lambdarec.inference.ranker import EXPORT_FORMAT_POSITION, META_FILE
    from lambdarec.models import retrain
    from lambdarec.models.deepfm import SERVING_EXPORT, DeepFMConfig

    shutil.copytree(run_dir, exposure_dir, ignore=shutil.ignore_patterns("deepfm"))
    config = DeepFMConfig(epochs=epochs)  # the champion's (train() above)
    data = retrain.load_built(exposure_dir)
    queries = data.valid.sample(config.max_queries, config.seed)
    table, placed = live_exposure(watch, data, queries)
    say(f"exposure: {placed}")
    if table.empty:
        raise SystemExit(f"no live list could be placed on a training query: {placed}")
    trained = retrain.train_ranker(exposure_dir, config, settings=settings, exposure_table=table)
    meta = json.loads((exposure_dir / "deepfm" / SERVING_EXPORT / META_FILE).read_text())
    if meta["format"] != EXPORT_FORMAT_POSITION:
        raise SystemExit(f"the exposure ranker's export has format {meta['format']}, not 4")
    return placed | {"attached": trained["exposure"], "epochs": len(trained["history"])}


def verdict(test: dict[str, Any]) -> str:
    """``wins``/``loses`` when the lift's 95% interval excludes 0, else ``ties``."""
    low, high = test["lift_ci"] or (None, None)
    if low is None or high is None:
        return "ties"
    return "wins" if low > 0 else "loses" if high < 0 else "ties"


def exposure(
    settings: Settings, config: GeneratorConfig, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Log the champion's lists, train the exposure ranker on them, then A/B it live:
    ``control`` the champion, ``treatment`` the same pipeline ranked by the exposure DeepFM."""
    run_dir, exposure_dir = work / "run", work / "run-exposure"
    base = start_serving(settings, "control:100", "", salt=f"exposure-log-{args.seed}")
    try:
        logged, watch = simulate(
            base,
            config,
            args.shoppers,
            args.minutes,
            args.rps,
            args.seed,
            args.threads,
            record=True,
        )
    finally:
        stop_serving(settings)
    say(f"exposure: logged {len(watch.shown)} lists, {len(watch.acted)} events from them")
    training = step(
        "exposure: the DeepFM on the champion's impressions",
        lambda: train_exposure(settings, run_dir, exposure_dir, watch, args.epochs),
    )
    # A new experiment (its own salt), the same shoppers as the logged run (returning users),
    # new choices (another seed).
    base = start_serving(
        settings,
        "control:50,treatment:50",
        "",
        salt=f"exposure-ab-{args.seed}",
        rankers=f"treatment:{exposure_dir / 'deepfm'}",
    )
    try:
        summary, ab_watch = simulate(
            base,
            config,
            args.shoppers,
            args.minutes,
            args.rps,
            args.seed + 1,
            args.threads,
            population_seed=args.seed,
        )
    finally:
        stop_serving(settings)
    out = read_out(summary, "control", "treatment", settings.ab_min_lists)
    for name in REPORTED:
        out[name]["exposure_ranker"] = verdict(out[name])
    out["training"] = training
    out["logging"] = {
        "lists": logged.lists,
        "events": dict(logged.events),
        "errors": dict(logged.errors),
    }
    out["lists"] = summary.lists
    out["requests"] = summary.lists + sum(summary.events.values())
    out["seconds"] = round(summary.seconds, 1)
    out["errors"] = dict(summary.errors)
    out["answers"] = ab_watch.as_dict()
    out["rankers"] = {f"{v}:{r}": n for (v, r), n in sorted(ab_watch.rankers.items())}
    out["degraded_parts_by_variant"] = {
        v: dict(parts) for v, parts in sorted(ab_watch.variant_parts.items())
    }
    ctr, conv = out["ctr_at_k"], out["conversion"]
    say(
        f"exposure A/B: CTR@10 champion {ctr['control']:.4f} vs exposure {ctr['treatment']:.4f} "
        f"(lift {ctr['lift']:+.1%}, CI {ctr['lift_ci']}, p={ctr['p_value']:.2g}); conversion "
        f"lift {conv['lift']:+.1%} (CI {conv['lift_ci']}, p={conv['p_value']:.2g})"
    )
    return out


# -- the command line ------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="A small run for the tests.")
    parser.add_argument("--users", type=int, default=2000, help="Users of the generated data.")
    parser.add_argument("--items", type=int, default=5000, help="Items of the generated data.")
    parser.add_argument("--days", type=int, default=5, help="Days of the generated data.")
    parser.add_argument("--data-seed", type=int, default=42, help="Seed of the generated data.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of both models.")
    parser.add_argument("--shoppers", type=int, default=DEMO_SHOPPERS)
    parser.add_argument("--minutes", type=_positive_float, default=DEMO_MINUTES)
    parser.add_argument("--rps", type=_positive_float, default=DEMO_RPS)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the detection run.")
    parser.add_argument("--aa-seeds", type=int, default=20)
    parser.add_argument("--aa-minutes", type=_positive_float, default=1.5)
    parser.add_argument("--aa-rps", type=_positive_float, default=2 * DEMO_RPS)
    parser.add_argument("--threads", type=int, default=8, help="Concurrent shoppers.")
    parser.add_argument("--alpha", type=_positive_float, default=0.05)
    parser.add_argument(
        "--skip",
        choices=("detection", "aa"),
        action="append",
        default=[],
        help="Leave out a phase (for a partial rerun); repeat it to leave out both.",
    )
    parser.add_argument(
        "--exposure",
        action="store_true",
        help="Add the exposure phase: the champion's impressions train a DeepFM, A/B'd live "
        "against the champion (--shoppers, --minutes, --rps for each of its two runs).",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # The demo's data (a smaller catalog has fewer categories: a popular list then matches
        # more shoppers, and the champion's lead shrinks to noise at a short budget), one epoch.
        args.epochs, args.shoppers, args.minutes, args.rps = 1, 200, 1.0, 2 * DEMO_RPS
        args.aa_seeds, args.aa_minutes, args.aa_rps = 2, 10 / 60, 2 * DEMO_RPS
    if min(args.users, args.items, args.days, args.epochs, args.shoppers, args.threads) < 1:
        parser.error("--users, --items, --days, --epochs, --shoppers and --threads must be >= 1")
    if args.aa_seeds < 0 or args.shoppers > args.users:
        parser.error("--aa-seeds must be >= 0 and --shoppers at most --users")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="lambdarec-bench-ab-"))
    # stdout carries the JSON line alone: Feast's materialisation and TensorFlow print there, so
    # file descriptor 1 points at stderr until the result is ready.
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run(args, work)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lambdarec.data.generator import GeneratorConfig
    from lambdarec.harness.platform import private_platform
    from lambdarec.streaming.kafka import ensure_topics

    config = GeneratorConfig(
        n_users=args.users,
        n_items=args.items,
        n_categories=min(200, max(1, args.items // 25)),  # the demo's rule
        days=args.days,
        seed=args.data_seed,
    )
    run_dir = work / "run"
    result: dict[str, Any] = {
        "budget": {
            "shoppers": args.shoppers,
            "minutes": args.minutes,
            "rps": args.rps,
            "demo": [DEMO_SHOPPERS, DEMO_MINUTES, DEMO_RPS],
        },
        "data": {"users": args.users, "items": args.items, "days": args.days},
        "epochs": args.epochs,
        "alpha": args.alpha,
        "quick": args.quick,
    }
    # No rate limit: every shopper is one client IP (loopback) asking at the measured rate.
    with private_platform(
        ["kafka"], serving_model_dir=str(run_dir / "two_tower"), rate_limit_rps=0.0
    ) as settings:
        try:
            step("Kafka topics", lambda: ensure_topics(settings))
            days = step(
                "data: the generated clickstream and catalog", lambda: write_data(settings, config)
            )
            step(
                "batch layer: daily tables, Feast apply and materialize",
                lambda: online_features(settings, days),
            )
            step(
                "models: two-tower and DeepFM by the retraining's steps",
                lambda: train(settings, run_dir, args.epochs),
            )
            step(
                "index: the item embeddings to Milvus Lite",
                lambda: publish_in_child(settings, run_dir),
            )
            result["setup_s"] = round(time.monotonic() - START, 1)
            if "detection" not in args.skip:
                result["detection"] = step(
                    "detection: popular (control) vs the champion (treatment)",
                    lambda: detection(settings, config, args),
                )
            if "aa" not in args.skip and args.aa_seeds:
                result["aa"] = step(
                    f"A/A: pipeline vs pipeline, {args.aa_seeds} seeds",
                    lambda: aa(settings, config, args),
                )
            if args.exposure:
                result["exposure"] = step(
                    "exposure: the champion vs the DeepFM trained on its impressions",
                    lambda: exposure(settings, config, args, work),
                )
        except BaseException:
            serving_log_tail(settings)
            raise
    result["elapsed_s"] = round(time.monotonic() - START, 1)
    return result


if __name__ == "__main__":
    main()
