"""What serves after the weekly gate (retrain.serving_choice) and how serving follows it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lambdarec.harness.platform import private_settings
from lambdarec.harness.waiting import eventually
from lambdarec.models.retrain import serving_choice
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models, Query
from serving.recommender import Recommender

if TYPE_CHECKING:
    from pathlib import Path


def _decision(promoted: bool, champion: str | None, champion_value: float | None) -> dict:
    return {
        "promoted": promoted,
        "version": "3",
        "reason": "why",
        "champion_version": champion,
        "champion_value": champion_value,
    }


def test_serving_choice() -> None:
    both = {"two_tower": _decision(True, "2", 0.1), "deepfm": _decision(True, "2", 0.1)}
    assert serving_choice(both, ["session_knn"], 0.2)["mode"] == "models"
    # not promoted, the champion still above the floor on this evaluation: it keeps serving
    kept = {"two_tower": _decision(False, "2", 0.25), "deepfm": _decision(False, "2", 0.25)}
    assert serving_choice(kept, ["session_knn"], 0.2)["mode"] == "champion"
    # a champion evaluated elsewhere cannot be compared: it keeps serving
    unknown = {"two_tower": _decision(False, "2", None), "deepfm": _decision(False, "2", None)}
    assert serving_choice(unknown, ["session_knn"], 0.2)["mode"] == "champion"
    # no champion, or one under the floor: the best pipeline without models serves
    for champion, value in ((None, None), ("2", 0.15)):
        lost = {
            "two_tower": _decision(False, champion, value),
            "deepfm": _decision(False, champion, value),
        }
        choice = serving_choice(lost, ["session_knn", "sequential_rules"], 0.2)
        assert choice["mode"] == "baselines"
        assert choice["sources"] == ["session_knn", "sequential_rules"]
        assert "session_knn+sequential_rules" in choice["reason"]


class Tower:
    def encode(self, features: dict[str, Any]) -> Any:
        import numpy as np

        return np.zeros(4, dtype=np.float32)


def test_serving_follows_the_gate(tmp_path: Path) -> None:
    """The marker says 'baselines': serving drops its models and serves those sources, ranked by
    their blend and not degraded; a later marker naming a champion brings the models back."""
    settings = private_settings(tmp_path)
    items = {f"i{n}": "c" for n in range(30)}
    rec = Recommender(
        Snapshot.from_items(items, [(i, 1.0 / (n + 1)) for n, i in enumerate(items)]),
        encoder=Tower(),  # type: ignore[arg-type]
        category_cap=1.0,
    )
    marker = settings.reload_marker
    marker.parent.mkdir(parents=True, exist_ok=True)
    query = Query("u1", None, 5)
    rec.watch_reload(settings, every_s=0.02, loader=lambda _: Models(Tower(), None))  # type: ignore[arg-type]
    try:
        marker.write_text(json.dumps({"serve": {"mode": "baselines", "sources": ["popular"]}}))
        eventually(lambda: rec.reloads >= 1, 10, interval_s=0.02, message="the switch")
        result = rec.recommend(query)
        assert [s.name for s in rec.pipeline.sources] == ["popular"]
        assert rec.models == Models(None, None)
        assert result.degraded_parts == ["online_store"]  # no ranker was expected
        assert [c.item_id for c in result.items] == ["i0", "i1", "i2", "i3", "i4"]
        import os
        import time

        marker.write_text(json.dumps({"serve": {"mode": "models"}}))
        os.utime(marker, (time.time() + 5, time.time() + 5))
        eventually(lambda: rec.reloads >= 2, 10, interval_s=0.02, message="the models back")
        assert rec.pipeline is rec.full_pipeline and rec.encoder is not None
    finally:
        rec.close()
