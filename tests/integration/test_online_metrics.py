"""The online_metrics DAG file under ``dag.test()``: the A/B readout's Spark job through the
operator's spark-submit on local[*], on small lake tables written with the shared contract's
exact schemas, checked against a pandas computation of the same metrics; then the guardrail task
on the job's output and the MLflow log.

The data plants a difference: variant ``b``'s users buy at a quarter of control's rate, so the
readout calls b worse on conversion and the guardrail switches it off. Duplicate rows (an
impression and an attributed event delivered twice), a click at a position beyond k, a click on
the previous day's list, a null session and the catalog are there to exercise the job's edges.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambdarec.monitoring import ab
from lambdarec.monitoring.ab_job import spark_job
from lambdarec.monitoring.guardrail import read_override, run_guardrail
from lambdarec.tables import partition_dir

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings
    from lambdarec.platform.dag_run import DagTestResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAYS = [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)]
VARIANTS = "control:50,b:50"
USERS = 600
LIST_LEN = 12
N_ITEMS = 400
K = 10

TS = pa.timestamp("ms", tz="UTC")
IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", TS),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("variant", pa.string()),
        ("item_id", pa.string()),
        ("position", pa.int32()),
        ("score", pa.float64()),
        ("source", pa.string()),
    ]
)
ATTRIBUTED_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_ts", TS),
        ("event_type", pa.string()),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("item_id", pa.string()),
        ("price", pa.float64()),
        ("revenue", pa.float64()),
        ("request_id", pa.string()),
        ("impression_ts", TS),
        ("variant", pa.string()),
        ("position", pa.int32()),
        ("match", pa.string()),
    ]
)


def _lake_tables(seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Impressions and attributed rows over DAYS; b buys at a quarter of control's rate."""
    rng = np.random.default_rng(seed)
    imps: list[tuple] = []
    acts: list[tuple] = []
    buy = {"control": 0.04, "b": 0.01}
    for d in DAYS:
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        for u in range(USERS):
            user, variant = f"u{u}", ("control" if u % 2 == 0 else "b")
            for r in range(1 + rng.poisson(2)):
                rid = f"{d.isoformat()}-{user}-{r}"
                ts = start + timedelta(hours=1 + r, minutes=int(rng.integers(0, 50)))
                session = None if u % 7 == 0 else f"s-{user}-{d.day}"
                items = rng.choice(N_ITEMS, LIST_LEN, replace=False)
                for pos, item in enumerate(items):
                    imps.append(
                        (
                            rid,
                            ts,
                            user,
                            session,
                            variant,
                            f"i{item}",
                            pos,
                            1.0 / (1 + pos),
                            "vector",
                        )
                    )
                    clicked = rng.random() < 0.08
                    if not clicked:
                        continue
                    price = float(rng.integers(5, 100))
                    events = [("view", 0)]
                    if rng.random() < 0.3:
                        events.append(("add_to_cart", 1))
                    if rng.random() < buy[variant] / 0.08:
                        events.append(("purchase", 2))
                    for kind, minute in events:
                        acts.append(
                            (
                                f"e-{rid}-{pos}-{kind}",
                                ts + timedelta(minutes=5 + minute),
                                kind,
                                user,
                                session,
                                f"i{item}",
                                price,
                                price if kind == "purchase" else 0.0,
                                rid,
                                ts,
                                variant,
                                pos,
                                "request_id" if u % 3 else "user_item",
                            )
                        )
    # A click just after midnight on the previous day's last list: it counts on its own day.
    rid, ts, user, session, variant, item, pos, _, _ = next(
        row for row in reversed(imps) if row[1].date() == DAYS[0]
    )
    late = datetime(DAYS[1].year, DAYS[1].month, DAYS[1].day, 0, 5, tzinfo=UTC)
    acts.append(
        (
            "e-late",
            late,
            "view",
            user,
            session,
            item,
            None,
            0.0,
            rid,
            ts,
            variant,
            pos,
            "request_id",
        )
    )
    imp = pd.DataFrame(imps, columns=IMPRESSIONS_SCHEMA.names)
    att = pd.DataFrame(acts, columns=ATTRIBUTED_SCHEMA.names)
    # At-least-once delivery: one impression row and one attributed event twice.
    imp = pd.concat([imp, imp.iloc[[3]]], ignore_index=True)
    att = pd.concat([att, att.iloc[[5]]], ignore_index=True)
    return imp, att


def _write(table: pd.DataFrame, root: Path, ts_column: str, schema: pa.Schema) -> None:
    days = table[ts_column].dt.date
    for d in sorted(days.unique()):
        part = table[days == d].reset_index(drop=True)
        folder = partition_dir(root, d)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, schema=schema, preserve_index=False),
            folder / "part-0.parquet",
        )


def _reference_rows(imp: pd.DataFrame, att: pd.DataFrame) -> pd.DataFrame:
    """The per-(day, variant, user) counts, computed in pandas."""
    imp = imp.drop_duplicates(["request_id", "position"]).assign(
        day=imp["ts"].dt.strftime("%Y-%m-%d"), top=lambda f: f["position"] < K
    )
    att = att.drop_duplicates(["event_id"]).assign(day=att["event_ts"].dt.strftime("%Y-%m-%d"))
    keys = ["day", "variant", "user_id"]
    shown = imp.groupby(keys).agg(
        impressions=("request_id", "size"),
        lists=("request_id", "nunique"),
        shown_top_k=("top", "sum"),
    )
    view = att["event_type"] == "view"
    att = att.assign(
        clicks=view,
        clicks_top_k=view & (att["position"] < K),
        carts=att["event_type"] == "add_to_cart",
        purchases=att["event_type"] == "purchase",
    )
    acted = att.groupby(keys)[["clicks", "clicks_top_k", "carts", "purchases", "revenue"]].sum()
    rows = shown.join(acted, how="outer").fillna(0).reset_index()
    return rows.astype({c: "int64" for c in ab.USER_COLUMNS if c != "revenue"})


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    from lambdarec.harness.platform import private_settings

    state = tmp_path_factory.mktemp("online-metrics")
    settings = private_settings(
        state, ab_variants=VARIANTS, ab_min_lists=500, ab_window_days=len(DAYS)
    )
    imp, att = _lake_tables()
    _write(imp, settings.lake_dir / "impressions", "ts", IMPRESSIONS_SCHEMA)
    _write(att, settings.lake_dir / "attributed", "event_ts", ATTRIBUTED_SCHEMA)
    catalog = settings.lake_dir / "catalog"
    catalog.mkdir(parents=True)
    pq.write_table(
        pa.table({"item_id": [f"i{n}" for n in range(2 * N_ITEMS)]}), catalog / "catalog.parquet"
    )
    return settings, imp, att


@pytest.fixture(scope="module")
def dag_run(lake) -> DagTestResult:
    """The real DAG file under ``dag.test()`` on the lake: the operator's spark-submit of the
    job, the guardrail on its readout, the MLflow log."""
    from lambdarec.platform.dag_run import run_dag_test

    settings, _, _ = lake
    # The operator's job runs on the spark_default connection's default master.
    assert spark_job(DAYS[-1], settings, driver_memory="1g").master == "local[*]"
    run = run_dag_test("online_metrics", DAYS[-1], settings, timeout_s=900)
    assert run.success, run.log[-4000:]
    return run


@pytest.fixture(scope="module")
def readout(lake, dag_run) -> dict:
    return json.loads((readout_dir(lake) / "readout.json").read_text())


def test_per_day_and_period_numbers_match_pandas(lake, readout) -> None:
    _, imp, att = lake
    rows = _reference_rows(imp, att)
    expected = ab.readout(rows, control="control", variants=["control", "b"], min_lists=500)
    assert sorted(readout["days"]) == [d.isoformat() for d in DAYS]
    for section, want in [
        *((readout["days"][d], expected["days"][d]) for d in expected["days"]),
        (readout["period"], expected["period"]),
    ]:
        for variant in ("control", "b"):
            got, ref = section["variants"][variant], want["variants"][variant]
            for total in ("users", "impressions", "lists", "clicks", "carts", "purchases"):
                assert got[total] == ref[total], (variant, total)
            assert got["revenue"] == pytest.approx(ref["revenue"])
            for name, m in ref["metrics"].items():
                for field, value in m.items():
                    assert got["metrics"][name][field] == pytest.approx(value), (variant, name)
        for name, m in want["tests"]["b"]["metrics"].items():
            got_t = section["tests"]["b"]["metrics"][name]
            assert got_t["p_value"] == pytest.approx(m["p_value"]), name
            assert got_t["verdict"] == m["verdict"], name


def test_metric_values_are_the_plain_ratios(lake, readout) -> None:
    _, imp, att = lake
    imp = imp.drop_duplicates(["request_id", "position"])
    att = att.drop_duplicates(["event_id"])
    for variant in ("control", "b"):
        i, a = imp[imp.variant == variant], att[att.variant == variant]
        metrics = readout["period"]["variants"][variant]["metrics"]
        lists = i["request_id"].nunique()
        views = a[a.event_type == "view"]
        assert metrics["ctr_at_k"]["value"] == pytest.approx(
            (views.position < K).sum() / (i.position < K).sum()
        )
        assert metrics["conversion"]["value"] == pytest.approx(
            (a.event_type == "purchase").sum() / lists
        )
        assert metrics["add_to_cart_rate"]["value"] == pytest.approx(
            (a.event_type == "add_to_cart").sum() / lists
        )
        assert metrics["revenue_per_1000"]["value"] == pytest.approx(
            1000 * a.revenue.sum() / len(i)
        )


def test_the_planted_difference_is_found_and_coverage_reported(lake, readout) -> None:
    _, imp, _ = lake
    conv = readout["period"]["tests"]["b"]["metrics"]["conversion"]
    assert conv["verdict"] == "worse" and conv["p_value"] < 0.01
    assert readout["control"] == "control"
    coverage = readout["guardrails"]["coverage"]
    assert coverage["catalog_items"] == 2 * N_ITEMS
    assert coverage["distinct_items"] == imp["item_id"].nunique()
    assert coverage["coverage"] == pytest.approx(imp["item_id"].nunique() / (2 * N_ITEMS))
    assert "not available" in readout["guardrails"]["latency_p99"]
    page = (readout_dir(lake) / "readout.html").read_text()
    # Self-contained: the plot is inline, nothing is fetched from elsewhere.
    assert "data:image/png;base64," in page and "<script" not in page and 'src="http' not in page
    assert "worse" in page and "not available" in page


def readout_dir(lake) -> Path:
    settings, _, _ = lake
    return settings.ab_reports_dir / DAYS[-1].isoformat()


def test_guardrail_switched_off_b_from_the_jobs_readout(lake, readout) -> None:
    settings, _, _ = lake
    # The DAG's apply_guardrail task read the job's readout: b buys at a quarter of control's
    # rate, so its weight is 0 and the report says so.
    assert read_override(settings.ab_override_path)["weights"] == {"b": 0}
    assert "set to weight 0" in (readout_dir(lake) / "readout.html").read_text()
    # Applied again to the same day, it changes nothing.
    again = run_guardrail(DAYS[-1].isoformat(), settings)
    assert again["changed"] == []
    assert read_override(settings.ab_override_path)["weights"] == {"b": 0}


def test_the_dag_runs_every_task_for_the_day(lake, dag_run) -> None:
    """The operator's spark-submit, then the guardrail and the MLflow log, each a success."""
    assert dag_run.tasks == {
        "compact_attribution": "success",
        "spark_online_metrics": "success",
        "apply_guardrail": "success",
        "log_to_mlflow": "success",
    }
    folder = readout_dir(lake)
    # No champion in this state's registry: nothing logged, the report says so.
    assert not (folder / "offline.json").exists()
    assert "Not logged yet" in (folder / "readout.html").read_text()
