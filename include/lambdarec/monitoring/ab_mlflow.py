"""The A/B readout on the model's MLflow run, and the model's offline metrics beside the online ones.

The ``online_metrics`` DAG's last task (``log_to_mlflow``) runs :func:`log_readout` for day D:

* every variant whose policy serves the champion (``pipeline`` or ``no_ranker``, from
  ``LAMBDAREC_AB_POLICIES``; a variant not listed runs ``pipeline``; a variant ranked by its own
  model, ``LAMBDAREC_AB_RANKERS``, does not serve the champion) gets its online metrics over
  the readout's window logged on the champion's training run in MLflow, one point per day:
  ``online.<variant>.<metric>`` (e.g. ``online.champion.ctr_at_k``), ``step`` = the day as
  ``YYYYMMDD``, so the run's page plots them over time and a re-run of a day overwrites nothing
  but adds the same point again;
* the champion's offline metrics (what the retraining's evaluation logged on that run) are
  written to ``offline.json`` beside the readout, and the report shows them beside the online
  numbers.

No champion (nothing trained yet) or no tracking server answering is not an error for the DAG:
the readout stands on its own; the result says what was skipped and why.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lambdarec.recommend.policies import PIPELINE, policy
from lambdarec.registry import TWO_TOWER

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: The registered model whose champion the variants serve (its run holds the evaluation).
MODEL = TWO_TOWER


def model_variants(
    variants: list[str], policies_spec: str, rankers_spec: str = ""
) -> dict[str, str]:
    """``{variant: policy}`` of the variants that serve the champion (not those ranked by their
    own model, ``LAMBDAREC_AB_RANKERS``)."""
    from lambdarec.config import parse_ab_policies, parse_ab_rankers

    chosen = parse_ab_policies(policies_spec, variants)
    own = parse_ab_rankers(rankers_spec, must_exist=False)
    out = {v: chosen.get(v, PIPELINE) for v in variants if v not in own}
    return {v: p for v, p in out.items() if policy(p).serves_model}


def online_metrics(readout: dict[str, Any], variant: str) -> dict[str, float]:
    """The variant's metric values over the readout's window (None values left out)."""
    section = readout["period"]["variants"].get(variant) or {}
    return {
        name: float(m["value"])
        for name, m in (section.get("metrics") or {}).items()
        if m.get("value") is not None
    }


def server_down(uri: str, timeout_s: float = 2.0) -> str | None:
    """Why an ``http(s)://`` tracking URI's server does not accept connections (None if it does,
    or for a local store): checked first, so a stopped server costs no client retries."""
    import socket

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"the MLflow tracking server at {uri} is not answering ({exc.strerror or exc})"


def day_step(day: str) -> int:
    """``2026-12-06`` -> ``20261206``: the MLflow step of a day's point."""
    return int(day.replace("-", ""))


def log_readout(ds: str, settings: Settings | None = None) -> dict[str, Any]:
    """Log day ``ds``'s readout on the champion's run, write ``offline.json`` and re-render the
    report with it; returns what was logged (or skipped, and why)."""
    from lambdarec.config import get_settings
    from lambdarec.monitoring import ab_report
    from lambdarec.registry import ModelRegistry, metric_key

    settings = settings or get_settings()
    folder, readout = ab_report.load_readout(settings.ab_reports_dir, ds)
    day = folder.name
    served = model_variants(
        list(readout["period"]["variants"]), settings.ab_policies, settings.ab_rankers
    )
    result: dict[str, Any] = {"day": day, "variants": served, "logged": {}, "skipped": None}
    down = server_down(settings.mlflow_uri)
    if down is not None:
        result["skipped"] = down
        log.warning("log_to_mlflow: %s; the readout stands without it", down)
        return result
    registry = ModelRegistry.from_settings(settings, MODEL)
    try:
        champion = registry.get_champion()
    except Exception as exc:  # noqa: BLE001 - any tracking failure leaves the readout as it is
        result["skipped"] = f"the MLflow registry at {settings.mlflow_uri} did not answer: {exc}"
        log.warning("log_to_mlflow: %s", result["skipped"])
        return result
    if champion is None:
        result["skipped"] = f"no champion of {MODEL!r} in the registry yet"
        log.info("log_to_mlflow: %s", result["skipped"])
        return result
    from mlflow.entities import Metric

    client = registry.client
    stamp = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
    result["logged"] = {variant: online_metrics(readout, variant) for variant in served}
    client.log_batch(
        champion.run_id,
        metrics=[
            Metric(metric_key(f"online.{variant}.{name}"), value, stamp, day_step(day))
            for variant, values in result["logged"].items()
            for name, value in values.items()
        ],
    )
    offline = {
        "model": MODEL,
        "version": champion.version,
        "run_id": champion.run_id,
        "variants": sorted(served),
        "metrics": {
            k: v
            for k, v in sorted(client.get_run(champion.run_id).data.metrics.items())
            if not k.startswith("online.")
        },
    }
    (folder / ab_report.OFFLINE_JSON).write_text(json.dumps(offline, indent=2))
    ab_report.write(folder, readout)
    result.update(version=champion.version, run_id=champion.run_id, offline=offline["metrics"])
    log.info(
        "log_to_mlflow: %s on run %s (version %s); offline metrics beside them in %s",
        ", ".join(served) or "no variant",
        champion.run_id,
        champion.version,
        folder / ab_report.OFFLINE_JSON,
    )
    return result
