"""What the ``drift_monitoring`` DAG runs: measure, report, log, and decide about retraining.

:func:`run_drift` for day D (the run's data interval ``[D, D+1)``):

1. loads the champion's reference profile (``settings.drift_model_name``, lambdarec.registry);
2. reads the window's events from the lake and impressions from the impressions topic, and
   compares each profiled feature (PSI, KL; :mod:`lambdarec.monitoring.drift`);
3. runs the skew check on a sample of the impressions (:mod:`lambdarec.monitoring.skew`);
4. writes ``<drift_reports_dir>/<D>/result.json`` and ``report.html``, refreshes the reports
   site's index, and logs the metrics to MLflow (experiment ``lambdarec/drift``, one run per day);
5. decides whether to retrain: a feature at ``act`` (PSI >= ``drift_psi_act``) asks for it,
   unless the guard says no.

The guard (so the monitor cannot loop retraining): no trigger when the monitor already triggered
one within ``drift_retrain_cooldown_days`` before D (or for D itself: re-running a day is
idempotent), read from ``retraining_triggers.jsonl``, or when a run of the retraining DAG is
queued or running (asked from Airflow by :func:`retraining_guard`). Retraining gives a new champion
with a new reference, after which the alarm clears by itself; the cooldown covers the time that
takes. :func:`record_trigger` appends to the ledger once the trigger succeeded.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from lambdarec.config import get_settings
from lambdarec.monitoring import report
from lambdarec.monitoring.drift import by_severity
from lambdarec.tables import as_day

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lambdarec.config import Settings
    from lambdarec.monitoring.drift import FeatureDrift

log = logging.getLogger(__name__)

LEDGER = "retraining_triggers.jsonl"
EXPERIMENT = "lambdarec/drift"
TAG_DAY = "lambdarec.drift_day"


class _CountsDagRuns(Protocol):
    def get_dr_count(self, dag_id: str, states: list[str] | None = ...) -> int: ...


# -- the retraining ledger and guard ---------------------------------------------------------


def ledger_entries(settings: Settings) -> list[dict[str, Any]]:
    path = settings.drift_reports_dir / LEDGER
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def cooldown_block(settings: Settings, day: date) -> str | None:
    """Why a trigger for ``day`` would be too soon after the last one, or None."""
    since = day - timedelta(days=settings.drift_retrain_cooldown_days)
    recent = [e for e in ledger_entries(settings) if since < as_day(e["day"]) <= day]
    if not recent:
        return None
    last = max(recent, key=lambda e: e["day"])
    return (
        f"retraining was already triggered for {last['day']} (run {last.get('run_id', '?')}), "
        f"within the {settings.drift_retrain_cooldown_days:g}-day cooldown "
        "(LAMBDAREC_DRIFT_RETRAIN_COOLDOWN_DAYS)"
    )


def decide(drifts: Sequence[FeatureDrift], settings: Settings, day: date) -> dict[str, Any]:
    """``{"decision": "trigger" | "skip" | "none", "reason"}`` from the alarms and the ledger."""
    alarms = [d.feature for d in drifts if d.status == "act"]
    if not alarms:
        return {"decision": "none", "reason": "no feature at or above the act threshold"}
    blocked = cooldown_block(settings, day)
    if blocked:
        return {"decision": "skip", "reason": blocked}
    return {
        "decision": "trigger",
        "reason": f"PSI >= {settings.drift_psi_act:g} on {', '.join(alarms)}",
    }


def retraining_guard(
    summary: dict[str, Any], ti: _CountsDagRuns | None = None, settings: Settings | None = None
) -> bool:
    """True when the DAG should trigger retraining now (the short-circuit task's body).

    Re-checks the cooldown (another run may have triggered since) and asks Airflow, through the
    task instance, whether a retraining run is queued or running.
    """
    s = settings or get_settings()
    if summary.get("retraining", {}).get("decision") != "trigger":
        log.info("no retraining: %s", summary.get("retraining", {}).get("reason"))
        return False
    blocked = cooldown_block(s, as_day(summary["day"]))
    if blocked:
        log.info("no retraining: %s", blocked)
        return False
    if ti is not None:
        active = ti.get_dr_count(dag_id=s.drift_retrain_dag_id, states=["queued", "running"])
        if active:
            log.info(
                "no retraining: %d run(s) of %s already queued or running",
                active,
                s.drift_retrain_dag_id,
            )
            return False
    log.info("triggering %s: %s", s.drift_retrain_dag_id, summary["retraining"]["reason"])
    return True


def record_trigger(
    summary: dict[str, Any], run_id: str, settings: Settings | None = None
) -> dict[str, Any]:
    """Append the trigger to the ledger and mark the day's result as triggered."""
    s = settings or get_settings()
    entry = {
        "day": summary["day"],
        "run_id": run_id,
        "dag_id": s.drift_retrain_dag_id,
        "alarms": summary.get("alarms", []),
        "recorded_at": datetime.now(UTC).isoformat(),
    }
    s.drift_reports_dir.mkdir(parents=True, exist_ok=True)
    with (s.drift_reports_dir / LEDGER).open("a") as fh:
        fh.write(json.dumps(entry) + "\n")
    path = report.day_dir(s, summary["day"]) / report.RESULT
    if path.is_file():
        result = json.loads(path.read_text())
        result["retraining"] = {**result.get("retraining", {}), "triggered_run_id": run_id}
        report.write(s, result)
    return entry


# -- MLflow ------------------------------------------------------------------------------------


def _log_mlflow(settings: Settings, result: dict[str, Any], paths: Sequence[Any]) -> str:
    """One MLflow run per day in ``lambdarec/drift`` (re-running a day reuses its run)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from lambdarec.registry import ensure_reachable, metric_key

    uri = settings.mlflow_uri
    ensure_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        # A server chooses its artifact store; a sqlite/file URI would write to ./mlruns.
        location = (
            None
            if uri.startswith("http")
            else (settings.state_dir / "mlflow" / "artifacts").as_uri()
        )
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_DAY}` = '{result['day']}'", max_results=1
    )
    run_id = (
        found[0].info.run_id
        if found
        else client.create_run(
            exp_id, run_name=f"drift-{result['day']}", tags={TAG_DAY: result["day"]}
        ).info.run_id
    )
    stamp = int(time.time() * 1000)
    metrics = [
        Metric("n_alarms", float(len(result["alarms"])), stamp, 0),
        Metric("n_watch", float(len(result["watch"])), stamp, 0),
        Metric("n_events", float(result["n_events"]), stamp, 0),
        Metric("n_impressions", float(result["n_impressions"]), stamp, 0),
    ]
    for f in result["features"]:
        metrics.append(Metric(metric_key(f"psi.{f['feature']}"), f["psi"], stamp, 0))
        metrics.append(Metric(metric_key(f"kl.{f['feature']}"), f["kl"], stamp, 0))
    for name, v in (result.get("skew") or {}).get("features", {}).items():
        metrics.append(Metric(metric_key(f"skew_rate.{name}"), v["rate"], stamp, 0))
    champion = result.get("champion", {})
    params = (
        []
        if found
        else [
            Param("champion_version", str(champion.get("version"))),
            Param("champion_run_id", str(champion.get("run_id"))),
            Param("psi_watch", str(result["thresholds"]["watch"])),
            Param("psi_act", str(result["thresholds"]["act"])),
        ]
    )
    for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(
            run_id,
            metrics=metrics[i : i + 900],
            params=params if i == 0 else [],
            tags=[RunTag("lambdarec.drift_decision", result["retraining"]["decision"])],
        )
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path="drift")
    client.set_terminated(run_id, status="FINISHED")
    return str(run_id)


# -- the run -----------------------------------------------------------------------------------


def run_drift(
    day: str | date,
    settings: Settings | None = None,
    *,
    impressions: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure day ``day`` against the champion's reference; returns the summary (XCom-sized:
    paths, alarms, the decision), the whole result is in ``result.json``.

    ``impressions`` skips reading the topic (for callers that already hold the records).
    """
    from lambdarec.monitoring.profile import load_champion_profile
    from lambdarec.monitoring.skew import check_skew
    from lambdarec.monitoring.sources import current_frames, read_events, read_impressions, window
    from lambdarec.reports import write_index

    s = settings or get_settings()
    d = as_day(day)
    t0 = time.perf_counter()
    profile, champion = load_champion_profile(s)
    start, end = window(d)
    log.info(
        "drift %s: champion %s v%s, %d profiled features, window %s .. %s",
        d,
        s.drift_model_name,
        champion.version,
        len(profile.features),
        start,
        end,
    )
    events = read_events(s, start, end)
    imps = list(impressions) if impressions is not None else read_impressions(s, start, end)
    log.info(
        "drift %s: %d events, %d impressions (%.1f s)",
        d,
        len(events),
        len(imps),
        time.perf_counter() - t0,
    )
    drifts = by_severity(
        profile.compare(current_frames(events, imps), watch=s.drift_psi_watch, act=s.drift_psi_act)
    )
    for item in drifts:
        log.info(
            "  %-48s %-8s PSI %.4f KL %.4f (n=%d)",
            item.feature,
            item.status,
            item.psi,
            item.kl,
            item.n_current,
        )
    skew: dict[str, Any] | None = None
    skew_note = ""
    if s.drift_skew_sample == 0:
        skew_note = "skew check off (LAMBDAREC_DRIFT_SKEW_SAMPLE=0)"
    elif not imps:
        skew_note = "no impressions in the window: nothing to check"
    else:
        skew = check_skew(imps, s, seed=int(d.strftime("%Y%m%d")))
        log.info("drift %s: skew check done (%.1f s)", d, time.perf_counter() - t0)
    result: dict[str, Any] = {
        "day": d.isoformat(),
        "window": [start.isoformat(), end.isoformat()],
        "champion": {
            "name": s.drift_model_name,
            "version": champion.version,
            "run_id": champion.run_id,
        },
        "thresholds": {"watch": s.drift_psi_watch, "act": s.drift_psi_act},
        "n_events": len(events),
        "n_impressions": len(imps),
        "alarms": [x.feature for x in drifts if x.status == "act"],
        "watch": [x.feature for x in drifts if x.status == "watch"],
        "features": [x.to_dict() for x in drifts],
        "skew": skew,
        "skew_note": skew_note,
        "retraining": decide(drifts, s, d),
    }
    json_path, html_path = report.write(s, result)
    write_index(s)
    mlflow_run = _log_mlflow(s, result, [json_path, html_path])
    log.info(
        "drift %s: alarms %s, retraining %s (%s); report %s (%.1f s)",
        d,
        result["alarms"] or "none",
        result["retraining"]["decision"],
        result["retraining"]["reason"],
        html_path,
        time.perf_counter() - t0,
    )
    return {
        "day": result["day"],
        "alarms": result["alarms"],
        "watch": result["watch"],
        "retraining": result["retraining"],
        "skew_mismatched": (skew or {}).get("mismatched_features", []),
        "result": str(json_path),
        "report": str(html_path),
        "report_url": f"http://{s.bind_host}:{s.reports_port}/reports/drift/{result['day']}/report.html",
        "mlflow_run_id": mlflow_run,
    }
