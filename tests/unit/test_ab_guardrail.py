"""The A/B guardrail: the decision, the override file's round trip, serving's assignment picking
up a changed file without a restart, and the report showing what was done."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from lambdarec.monitoring.ab import readout
from lambdarec.monitoring.guardrail import (
    apply,
    decide,
    disabled_variants,
    read_override,
    run_guardrail,
    write_override,
)
from serving.ab import LiveVariants, Variants

if TYPE_CHECKING:
    from pathlib import Path

CONTROL_RATE = 0.06


def _rows(rates: dict[str, float], users: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for variant, rate in rates.items():
        lists = 1 + rng.poisson(3, users)
        purchases = rng.binomial(lists, rate)
        parts.append(
            pd.DataFrame(
                {
                    "day": "2024-05-01",
                    "variant": variant,
                    "user_id": [f"u{i}" for i in range(users)],
                    "impressions": lists * 10,
                    "lists": lists,
                    "clicks": lists,
                    "carts": purchases,
                    "purchases": purchases,
                    "revenue": purchases * 10.0,
                    "clicks_top_k": lists,
                    "shown_top_k": lists * 10,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _readout(rates: dict[str, float], users: int = 20_000, min_lists: int = 1000) -> dict:
    return readout(_rows(rates, users), control="control", min_lists=min_lists)


@pytest.mark.parametrize(
    ("rate", "users", "action"),
    [
        (0.04, 20_000, "disable"),  # clearly worse, plenty of data
        (0.08, 20_000, "keep"),  # better
        (0.0595, 20_000, "keep"),  # a hair worse, not significant
        (0.01, 100, "keep"),  # much worse but below the minimum sample
    ],
    ids=["worse", "better", "not-significant", "too-little-data"],
)
def test_decision(rate: float, users: int, action: str) -> None:
    out = _readout({"control": CONTROL_RATE, "b": rate}, users=users)
    decision = decide(out, p_threshold=0.01)["b"]
    assert decision["action"] == action, decision["why"]
    if users < 1000:
        assert decision["why"].startswith("not enough data")


def test_override_round_trip_is_atomic_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "ab" / "variants.json"
    assert read_override(path) == {"weights": {}, "changes": []}
    data = {"weights": {"b": 0, "c": 5}, "changes": [{"variant": "b", "weight": 0}]}
    write_override(path, data)
    assert read_override(path) == data
    assert disabled_variants(read_override(path)) == {"b"}
    assert [p.name for p in path.parent.iterdir()] == ["variants.json"]  # no temporary left
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON") as info:
        read_override(path)
    assert "\n" not in str(info.value)
    path.write_text(json.dumps({"weights": {"b": -1}}))
    with pytest.raises(ValueError, match="number >= 0"):
        read_override(path)


def test_apply_switches_off_once_and_records_who_why_when(tmp_path: Path) -> None:
    path = tmp_path / "variants.json"
    out = _readout({"control": CONTROL_RATE, "b": 0.04, "c": 0.08})
    first = apply(out, path, p_threshold=0.01, day="2024-05-01")
    assert first["changed"] == ["b"]
    saved = read_override(path)
    assert saved["weights"] == {"b": 0}
    (change,) = saved["changes"]
    assert change["variant"] == "b" and change["by"].startswith("guardrail")
    assert "conversion" in change["why"] and change["at"].endswith("Z")
    mtime = path.stat().st_mtime_ns
    again = apply(out, path, p_threshold=0.01, day="2024-05-01")
    assert again["changed"] == [] and path.stat().st_mtime_ns == mtime
    assert again["decisions"]["b"]["note"] == "already at weight 0"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _users_of(variants: Variants, name: str, n: int = 50) -> list[str]:
    found = [f"user-{i}" for i in range(5_000) if variants.assign(f"user-{i}") == name]
    return found[:n]


def test_serving_assignment_follows_the_file_without_restart(tmp_path: Path) -> None:
    base = Variants.parse("control:50,b:25,c:25")
    path = tmp_path / "variants.json"
    clock = _Clock()
    live = LiveVariants(base, path, clock=clock)
    b_users, c_users = _users_of(base, "b"), _users_of(base, "c")
    assert {live.assign(u) for u in b_users} == {"b"}

    write_override(path, {"weights": {"b": 0}, "changes": []})
    os.utime(path, ns=(1, 1))  # a distinct mtime even on a coarse clock
    clock.now = 0.5  # within the check interval: not re-read yet
    assert {live.assign(u) for u in b_users} == {"b"}
    clock.now = 1.5
    assert {live.assign(u) for u in b_users} == {"control"}
    assert {live.assign(u) for u in c_users} == {"c"}  # nobody else moves

    path.unlink()  # a person deletes the override: b is back
    clock.now = 3.0
    assert {live.assign(u) for u in b_users} == {"b"}


def test_serving_ignores_a_bad_file_and_never_switches_off_control(tmp_path: Path) -> None:
    base = Variants.parse("control:50,b:50")
    path = tmp_path / "variants.json"
    write_override(path, {"weights": {"b": 0}, "changes": []})
    clock = _Clock()
    live = LiveVariants(base, path, clock=clock)
    assert live.disabled == {"b"}
    path.write_text("{broken")
    clock.now = 2.0
    assert live.disabled == {"b"}  # the last good override stays
    write_override(path, {"weights": {"control": 0, "b": 0}, "changes": []})
    os.utime(path, ns=(5, 5))
    clock.now = 4.0
    assert live.disabled == {"b"}
    users = _users_of(base, "control")
    assert {live.assign(u) for u in users} == {"control"}


class _Impressions:
    def __init__(self) -> None:
        self.emitted: list[dict] = []

    def emit(self, record: dict) -> None:
        self.emitted.append(record)


def test_flask_app_serves_control_after_the_guardrail_wrote_the_file(tmp_path: Path) -> None:
    from lambdarec.harness.platform import private_settings
    from lambdarec.recommend.snapshot import Snapshot
    from serving import create_app
    from serving.recommender import Recommender
    from serving.state import EXTENSION

    settings = private_settings(tmp_path, api_keys="", ab_variants="control:50,b:50")

    def app_with(variants: LiveVariants | None):
        recommender = Recommender(
            Snapshot.from_items({f"i{n}": "c" for n in range(20)}, [("i1", 1.0)])
        )
        return create_app(
            settings,
            recommender,
            variants=variants,
            impressions=_Impressions(),  # type: ignore[arg-type]
            load_model=False,
        )

    # The factory wraps the configured variants in the live override by default.
    default = app_with(None).extensions[EXTENSION].variants
    assert isinstance(default, LiveVariants) and default.path == settings.ab_override_path

    clock = _Clock()
    base = Variants.parse(settings.ab_variants)
    app = app_with(LiveVariants(base, settings.ab_override_path, clock=clock))
    client = app.test_client()
    user = _users_of(base, "b", 1)[0]
    assert client.get(f"/recommend?user_id={user}").get_json()["variant"] == "b"
    apply(
        _readout({"control": CONTROL_RATE, "b": 0.04}),
        settings.ab_override_path,
        p_threshold=0.01,
        day="2024-05-01",
    )
    clock.now = 1.5
    body = client.get(f"/recommend?user_id={user}").get_json()
    assert body["variant"] == "control"
    assert app.extensions[EXTENSION].impressions.emitted[-1]["variant"] == "control"


def test_run_guardrail_writes_its_file_and_shows_it_in_the_report(tmp_path: Path) -> None:
    from lambdarec.config import Settings
    from lambdarec.monitoring import ab_report

    settings = Settings(state_dir=tmp_path)
    out = _readout({"control": CONTROL_RATE, "b": 0.04})
    folder = settings.ab_reports_dir / "2024-05-01"
    ab_report.write(folder, {**out, "day": "2024-05-01"})
    assert "not applied yet" in (folder / "readout.html").read_text()
    result = run_guardrail("2024-05-01", settings)
    assert result["changed"] == ["b"]
    assert read_override(settings.ab_override_path)["weights"] == {"b": 0}
    page = (folder / "readout.html").read_text()
    assert "set to weight 0" in page and "Switched off now" in page
    assert json.loads((folder / "guardrail.json").read_text())["changed"] == ["b"]
    index = (settings.site_dir / "index.html").read_text()
    assert 'href="reports/ab/2024-05-01/readout.html"' in index
    assert "guardrail switched off b" in index


def test_run_guardrail_without_a_readout_says_what_to_run(tmp_path: Path) -> None:
    from lambdarec.config import Settings

    with pytest.raises(FileNotFoundError, match="run the online_metrics Spark job"):
        run_guardrail("2024-05-01", Settings(state_dir=tmp_path))
