"""Reference profiles: the distributions a model was trained on, saved with its MLflow run.

A profile holds, per feature, the bins fixed from the training data and the reference counts in
them (:mod:`lambdarec.monitoring.drift`). Features come in groups, named after where the
monitoring finds their current values:

* ``events`` — columns of the shoppers' events (:func:`lambdarec.monitoring.sources.event_features`:
  price, category, event type, hour of day);
* ``served`` — the feature vector serving logs with each impression (``<view>__<feature>``, e.g.
  ``user_history_30d__avg_price_viewed_30d``); at training time, the same features as Feast
  returned them for the training rows;
* ``model`` — ``score`` (the model's score of each recommended item) and ``popularity`` (the
  recommended item's popularity percentile among the items of the same period's events).

Build with :func:`build_profile`, save with :func:`save_profile` (an artifact of the model's run,
``monitoring/reference_profile.json``; :meth:`lambdarec.registry.ModelRegistry.log_run` does it
when given ``reference_profile=``), load the champion's with :func:`load_champion_profile`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lambdarec.monitoring.drift import (
    ACT,
    WATCH,
    Bins,
    FeatureDrift,
    by_severity,
    compare,
    fit_bins,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import pandas as pd
    from mlflow import MlflowClient

    from lambdarec.config import Settings
    from lambdarec.registry import Champion

__all__ = [
    "PROFILE_ARTIFACT",
    "FeatureProfile",
    "NoChampionError",
    "ProfileNotFoundError",
    "ReferenceProfile",
    "build_profile",
    "load_champion_profile",
    "load_profile",
    "save_profile",
    "training_profile",
]

#: Where the profile lives among a run's artifacts.
PROFILE_ARTIFACT = "monitoring/reference_profile.json"
#: Also looked for inside the model folder (a trainer may write it beside the weights).
MODEL_PROFILE_ARTIFACT = "model/reference_profile.json"
FORMAT_VERSION = 1
GROUPS = ("events", "served", "model")


class ProfileNotFoundError(LookupError):
    """No champion, or the champion's run has no reference profile; the message says which."""


class NoChampionError(ProfileNotFoundError):
    """The monitored model has no champion yet (a new deployment, or every retraining so far
    served the baselines): there is nothing to measure drift against."""


@dataclass
class FeatureProfile:
    name: str
    group: str
    bins: Bins
    counts: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "bins": self.bins.to_dict(),
            "counts": [int(c) for c in self.counts],
        }


@dataclass
class ReferenceProfile:
    features: dict[str, FeatureProfile]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    #: free-form: data range, dataset name, row counts...
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "created_at": self.created_at,
                "meta": self.meta,
                "features": [f.to_dict() for f in self.features.values()],
            },
            default=str,
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"reference profile format {data.get('format_version')!r} is not "
                f"{FORMAT_VERSION}; rebuild it with lambdarec.monitoring.profile.build_profile"
            )
        features = {
            f["name"]: FeatureProfile(
                f["name"], f["group"], Bins.from_dict(f["bins"]), [int(c) for c in f["counts"]]
            )
            for f in data["features"]
        }
        return cls(features, data.get("created_at", ""), data.get("meta", {}))

    def log_to(self, client: MlflowClient, run_id: str) -> str:
        """Save as an artifact of ``run_id``; returns the artifact path."""
        client.log_text(run_id, self.to_json(), PROFILE_ARTIFACT)
        return PROFILE_ARTIFACT

    def compare(
        self,
        current: Mapping[str, pd.DataFrame | None],
        *,
        watch: float = WATCH,
        act: float = ACT,
    ) -> list[FeatureDrift]:
        """Each feature against the current frame of its group (a missing column or frame
        counts as no data); most severe first."""
        out = []
        for feat in self.features.values():
            frame = current.get(feat.group)
            values: Any = ()
            if frame is not None and feat.name in frame.columns:
                values = frame[feat.name]
            out.append(
                compare(
                    feat.name,
                    feat.bins,
                    feat.counts,
                    values,
                    group=feat.group,
                    watch=watch,
                    act=act,
                )
            )
        return by_severity(out)


def _scalar_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose values are scalars (lists/arrays, e.g. recent item ids, are not profiled)."""
    keep = []
    for col in frame.columns:
        sample = frame[col].dropna().head(50)
        if not any(isinstance(v, list | tuple | dict | np.ndarray) for v in sample):
            keep.append(str(col))
    return keep


def build_profile(
    frames: Mapping[str, pd.DataFrame],
    *,
    scores: Iterable[float] | None = None,
    popularity: Iterable[float] | None = None,
    columns: Mapping[str, Iterable[str]] | None = None,
    categorical: Iterable[str] = (),
    n_bins: int = 10,
    top_n: int = 20,
    meta: Mapping[str, Any] | None = None,
) -> ReferenceProfile:
    """A profile from training frames keyed by group (``events``, ``served``).

    ``columns`` restricts a group to some columns (default: every scalar column). A column's kind
    is inferred (numbers: numeric, else categorical); list a numeric-looking code in
    ``categorical`` to bin it by value. ``scores`` and ``popularity`` (one value per recommended
    item at evaluation time) become the ``model`` group.
    """
    unknown = sorted(set(frames) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown feature group(s) {unknown}; use {', '.join(GROUPS)}")
    forced = set(categorical)
    features: dict[str, FeatureProfile] = {}

    def add(name: str, group: str, values: Any) -> None:
        if name in features:
            raise ValueError(
                f"feature {name!r} appears in groups {features[name].group!r} and "
                f"{group!r}; rename one column"
            )
        bins = fit_bins(
            values, "categorical" if name in forced else None, n_bins=n_bins, top_n=top_n
        )
        features[name] = FeatureProfile(name, group, bins, bins.counts(values).tolist())

    for group, frame in frames.items():
        if frame is None or frame.empty:
            continue
        wanted = list((columns or {}).get(group, _scalar_columns(frame)))
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{group} frame lacks column(s) {missing}; present: "
                f"{sorted(map(str, frame.columns))}"
            )
        for col in wanted:
            add(col, group, frame[col])
    if scores is not None:
        add("score", "model", np.asarray(list(scores), dtype=float))
    if popularity is not None:
        add("popularity", "model", np.asarray(list(popularity), dtype=float))
    if not features:
        raise ValueError("nothing to profile: every frame is empty and no scores were given")
    info = {
        "n_rows": {g: int(len(f)) for g, f in frames.items() if f is not None},
        "n_bins": n_bins,
        "top_n": top_n,
        **(meta or {}),
    }
    return ReferenceProfile(features, meta=info)


def save_profile(profile: ReferenceProfile, run_id: str, client: MlflowClient) -> str:
    """Save ``profile`` as an MLflow artifact of ``run_id`` (see :data:`PROFILE_ARTIFACT`)."""
    return profile.log_to(client, run_id)


def load_profile(run_id: str, client: MlflowClient) -> ReferenceProfile:
    """The profile saved with ``run_id`` (its monitoring artifact, else inside its model folder)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="lambdarec-profile-") as tmp:
        for artifact in (PROFILE_ARTIFACT, MODEL_PROFILE_ARTIFACT):
            try:
                local = client.download_artifacts(run_id, artifact, tmp)
            except (MlflowException, OSError):
                continue
            return ReferenceProfile.from_json(Path(local).read_text())
    raise ProfileNotFoundError(
        f"run {run_id} has no {PROFILE_ARTIFACT}; log the model with "
        "ModelRegistry.log_run(..., reference_profile=build_profile(...))"
    )


def training_profile(
    settings: Settings,
    start: str,
    end: str,
    *,
    scores: Iterable[float] | None = None,
    popularity: Iterable[float] | None = None,
    served: pd.DataFrame | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ReferenceProfile:
    """The profile of a training period ``start``..``end`` (days, both included) of the settings'
    lake, plus what the trainer adds: scores and popularity of its recommendations on the
    validation queries, and the served features of its training rows (Feast, ``<view>__<name>``).

    One line for a trainer: ``registry.log_run(..., reference_profile=training_profile(s, *range))``.
    """
    from lambdarec.monitoring.sources import event_features, read_events, window

    first, _ = window(start)
    _, last = window(end)
    events = read_events(settings, first, last)
    if events.empty:
        raise ProfileNotFoundError(
            f"the lake {settings.lake_dir} has no events from {start} to {end} to profile; "
            "pass the training frames to build_profile instead"
        )
    frames: dict[str, pd.DataFrame] = {"events": event_features(events)}
    if served is not None:
        frames["served"] = served
    return build_profile(
        frames,
        scores=scores,
        popularity=popularity,
        n_bins=settings.drift_bins,
        top_n=settings.drift_top_categories,
        meta={"data_range": [str(start), str(end)], **(meta or {})},
    )


def load_champion_profile(settings: Settings) -> tuple[ReferenceProfile, Champion]:
    """The reference profile of ``settings.drift_model_name``'s champion, and the champion.

    A champion logged without a profile but with its training data range (the run's
    ``lambdarec.data_start``/``data_end`` tags) gets one rebuilt from the lake's events of that
    range (event features only; ``meta["source"]`` says so).
    """
    from lambdarec.registry import TAG_DATA_END, TAG_DATA_START, ModelRegistry

    registry = ModelRegistry.from_settings(settings, settings.drift_model_name)
    champion = registry.get_champion()
    if champion is None:
        raise NoChampionError(
            f"model {settings.drift_model_name!r} has no champion at {settings.mlflow_uri}; "
            "train and promote one first (or set LAMBDAREC_DRIFT_MODEL_NAME)"
        )
    try:
        return load_profile(champion.run_id, registry.client), champion
    except ProfileNotFoundError as missing:
        tags = registry.client.get_run(champion.run_id).data.tags
        start, end = tags.get(TAG_DATA_START), tags.get(TAG_DATA_END)
        if not (start and end):
            raise ProfileNotFoundError(
                f"{missing}; its run has no data range to rebuild one from"
            ) from None
        profile = training_profile(
            settings,
            start[:10],
            end[:10],
            meta={"source": "rebuilt from the lake (no saved profile)"},
        )
        return profile, champion
