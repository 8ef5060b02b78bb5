"""The A/B guardrail: a variant significantly worse than control on conversion is switched off.

Rule: a non-control variant whose whole-period conversion (purchases per list) is below
control's with a p-value under ``settings.ab_guardrail_p`` (0.01), both groups having served at
least ``settings.ab_min_lists`` lists, gets weight 0. Better, not significant or too little data
leaves it as it is. The guardrail only ever switches variants off; switching one back on is a
person's decision (edit or delete the file).

The switch is the override file ``settings.ab_override_path`` (``<state_dir>/ab/variants.json``),
written atomically (a temporary file renamed over it)::

    {"weights": {"b": 0},
     "changes": [{"variant": "b", "weight": 0, "by": "guardrail (online_metrics DAG)",
                  "why": "conversion -12.0% vs control (p=0.0003, 41,000 lists)",
                  "at": "2024-05-02T01:00:03Z", "day": "2024-05-01"}]}

Serving (:class:`serving.ab.LiveVariants`) checks the file's mtime at most once a second and
reloads it when it changed, without a restart: users of a weight-0 variant are served control,
and everyone else keeps their variant (buckets do not move). Only weight 0 has an effect; a
positive weight (or no entry) serves the variant as configured in ``LAMBDAREC_AB_VARIANTS``.
The control itself cannot be switched off.

Stdlib only: serving reads the file through :func:`read_override`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: The metric the guardrail watches.
METRIC = "conversion"
BY = "guardrail (online_metrics DAG)"


# -- the override file -----------------------------------------------------------------------
def read_override(path: str | Path) -> dict[str, Any]:
    """The override file as ``{"weights": {name: weight}, "changes": [...]}``; an absent file
    is an empty override. Raises ValueError (one line, naming the file) when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"weights": {}, "changes": []}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"{path} is not JSON ({exc}); fix or delete it (the guardrail rewrites it)"
        ) from None
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v >= 0
        for k, v in weights.items()
    ):
        raise ValueError(
            f"{path} needs a 'weights' object of variant name -> number >= 0, "
            'e.g. {"weights": {"b": 0}}; fix or delete it'
        )
    changes = data.get("changes", [])
    return {"weights": dict(weights), "changes": changes if isinstance(changes, list) else []}


def disabled_variants(override: dict[str, Any]) -> frozenset[str]:
    return frozenset(name for name, weight in override["weights"].items() if weight == 0)


def write_override(path: str | Path, override: dict[str, Any]) -> Path:
    """Replace the override file atomically (readers see the old or the new file, never half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".variants.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(override, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- the decision ----------------------------------------------------------------------------
def decide(readout: dict[str, Any], *, p_threshold: float) -> dict[str, dict[str, Any]]:
    """Per non-control variant: ``{"action": "disable" | "keep", "why": ...}`` from the
    readout's whole-period conversion test (the rule of the module docstring)."""
    decisions: dict[str, dict[str, Any]] = {}
    for variant, test in readout["period"]["tests"].items():
        conv = test["metrics"][METRIC]
        p, diff, lift = conv.get("p_value"), conv.get("difference"), conv.get("lift")
        if not test["enough_data"] or p is None or diff is None:
            why = (
                f"not enough data: {test['lists']:,} lists in {variant}, "
                f"{test['control_lists']:,} in {test['control']} (minimum {test['min_lists']:,})"
            )
            decisions[variant] = {"action": "keep", "why": why}
            continue
        shown = f"{lift:+.1%}" if lift is not None else f"{diff:+.5f}"
        figures = f"{METRIC} {shown} vs {test['control']} (p={p:.2g}, {test['lists']:,} lists)"
        if diff < 0 and p < p_threshold:
            decisions[variant] = {"action": "disable", "why": figures}
        elif diff < 0:
            decisions[variant] = {
                "action": "keep",
                "why": f"{figures}: not significant at p < {p_threshold:g}",
            }
        else:
            decisions[variant] = {"action": "keep", "why": f"{figures}: not worse"}
    return decisions


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply(
    readout: dict[str, Any], override_path: str | Path, *, p_threshold: float, day: str
) -> dict[str, Any]:
    """Decide, and set each variant to disable to weight 0 in the override file (a variant
    already at 0 is left alone, so re-running a day changes nothing). Returns what was done."""
    decisions = decide(readout, p_threshold=p_threshold)
    override = read_override(override_path)
    control = readout["control"]
    changed = []
    for variant, decision in decisions.items():
        if decision["action"] != "disable" or variant == control:
            continue
        if override["weights"].get(variant) == 0:
            decision["note"] = "already at weight 0"
            continue
        override["weights"][variant] = 0
        override["changes"].append(
            {
                "variant": variant,
                "weight": 0,
                "by": BY,
                "why": decision["why"],
                "at": _now(),
                "day": day,
            }
        )
        changed.append(variant)
        log.warning(
            "guardrail: variant %s set to weight 0 (its users get %s): %s",
            variant,
            control,
            decision["why"],
        )
    if changed:
        write_override(override_path, override)
    for variant, decision in decisions.items():
        if decision["action"] == "keep":
            log.info("guardrail: variant %s unchanged: %s", variant, decision["why"])
    return {
        "day": day,
        "metric": METRIC,
        "p_threshold": p_threshold,
        "decisions": decisions,
        "changed": changed,
        "override_path": str(override_path),
        "weights": override["weights"],
        "changes": override["changes"],
    }


def run_guardrail(ds: str, settings: Settings | None = None) -> dict[str, Any]:
    """What the ``online_metrics`` DAG's guardrail task runs for day ``ds``: reads
    ``<ab_reports_dir>/<ds>/readout.json``, applies the rule, writes ``guardrail.json`` beside
    it, re-renders ``readout.html`` with the decision and refreshes the reports site's index."""
    from lambdarec.config import get_settings
    from lambdarec.monitoring import ab_report

    settings = settings or get_settings()
    folder, readout = ab_report.load_readout(settings.ab_reports_dir, ds)
    day = folder.name
    result = apply(readout, settings.ab_override_path, p_threshold=settings.ab_guardrail_p, day=day)
    tmp = folder / (ab_report.GUARDRAIL_JSON + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(folder / ab_report.GUARDRAIL_JSON)
    ab_report.write_html(folder, readout, guardrail=result)
    from lambdarec.reports import write_index

    write_index(settings)
    return {
        "day": day,
        "changed": result["changed"],
        "report": str(folder / ab_report.READOUT_HTML),
    }
