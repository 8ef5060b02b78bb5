"""A/B variant policies (issue #22): the setting's parsing and validation, the pipeline run with a
named policy, and /recommend serving each user the policy of their variant (the guardrail's
switch included), named in the response and the impression."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from lambdarec.config import AB_POLICIES, Settings, parse_ab_policies
from lambdarec.harness.platform import private_settings
from lambdarec.monitoring.guardrail import write_override
from lambdarec.recommend.memory import MemoryFeatures
from lambdarec.recommend.pipeline import Pipeline
from lambdarec.recommend.policies import POLICIES
from lambdarec.recommend.snapshot import Snapshot
from lambdarec.recommend.types import Models, Query
from serving import create_app
from serving.ab import LiveVariants, Variants
from serving.recommender import Recommender
from serving.state import EXTENSION

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import numpy as np
    from flask import Flask

N_ITEMS = 40
#: The ten most popular items are all shoes, so the category cap shapes the popular list too.
CATEGORIES = {f"i{n}": "shoes" if n < 10 else f"c{n % 5}" for n in range(N_ITEMS)}
#: Popularity falls with the item's number: i0 is the most popular.
SNAPSHOT = Snapshot.from_items(CATEGORIES, [(f"i{n}", float(N_ITEMS - n)) for n in range(N_ITEMS)])
SOURCES = ["cooccurrence", "popular"]
#: Each user's session ``s-<user>`` viewed i3 and bought i1 (the session's purchases are excluded by the pipeline).
CONTEXT = {
    "session_features__last_viewed_items": ["i3"],
    "session_features__last_purchased_items": ["i1"],
}
COOCCURRENCE = {
    "item_cooccurrence": {"i3": {"co_bought_items": ["i30"], "co_bought_scores": [1.0]}}
}


def _number(item_id: str) -> int:
    return int(item_id[1:])


class ReverseRanker:
    """A ranker stand-in that likes what popularity does not: the higher the item's number, the
    higher its score, so a ranked list and the popular list differ."""

    sources: Sequence[str] = tuple(SOURCES)

    def score(
        self,
        features: Mapping[str, Any],
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        source_scores: np.ndarray,
        source_ranks: np.ndarray,
    ) -> list[tuple[float, dict[str, float]]]:
        return [(float(_number(i)), {"item_number": float(_number(i))}) for i in item_ids]


def _features(users: Sequence[str]) -> MemoryFeatures:
    return MemoryFeatures(contexts={(u, f"s-{u}"): CONTEXT for u in users}, views=COOCCURRENCE)


def _recommender(users: Sequence[str] = ("u1",)) -> Recommender:
    return Recommender(SNAPSHOT, features=_features(users), ranker=ReverseRanker(), sources=SOURCES)


class _Impressions:
    def __init__(self) -> None:
        self.emitted: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.emitted.append(record)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _users_of(variants: Variants, name: str, n: int = 5) -> list[str]:
    return [u for u in (f"user-{i}" for i in range(2_000)) if variants.assign(u) == name][:n]


def _popular_expected(blocked: set[str], k: int = 10) -> list[str]:
    """The popular list the rules allow: by popularity, blocked items out, at most half of the
    list shoes (the default category cap), the list then ordered by popularity."""
    shoes = [f"i{n}" for n in range(10) if f"i{n}" not in blocked][: k // 2]
    others = [f"i{n}" for n in range(10, N_ITEMS) if f"i{n}" not in blocked][: k - len(shoes)]
    return sorted(shoes + others, key=_number)


# -- the setting --------------------------------------------------------------------------------


def test_the_policy_names_of_the_setting_are_the_pipelines() -> None:
    assert set(AB_POLICIES) == set(POLICIES)


def test_policies_parse_to_a_map_of_the_variants_listed() -> None:
    assert parse_ab_policies("") == {}
    assert parse_ab_policies(" base:popular , b:no_ranker ", ["control", "base", "b"]) == {
        "base": "popular",
        "b": "no_ranker",
    }
    settings = Settings(ab_variants="control:50,base:50", ab_policies="base:popular")
    assert settings.ab_policies == "base:popular"
    assert Variants.parse(settings.ab_variants, policies=settings.ab_policies).policies == (
        ("base", "popular"),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("base:nope", r"unknown policy 'nope'; choose from pipeline, no_ranker, popular"),
        ("base", r"entry 'base' is not variant:policy"),
        ("base:popular,base:pipeline", r"names variant 'base' twice"),
        ("gone:popular", r"variant\(s\) \['gone'\] that are not in the A/B variants"),
    ],
    ids=["unknown-policy", "malformed", "twice", "unknown-variant"],
)
def test_a_bad_setting_is_a_one_line_error_naming_it(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_ab_policies(spec, ["control", "base"])
    assert str(info.value).startswith("LAMBDAREC_AB_POLICIES") and "\n" not in str(info.value)
    with pytest.raises(ValidationError, match=message):
        Settings(ab_variants="control:50,base:50", ab_policies=spec)


def test_the_app_refuses_to_start_with_a_policy_for_a_variant_it_does_not_run(
    tmp_path: Path,
) -> None:
    settings = private_settings(
        tmp_path, api_keys="", ab_variants="control:50,base:50", ab_policies="base:popular"
    )
    with pytest.raises(ValueError, match=r"LAMBDAREC_AB_POLICIES names variant\(s\) \['base'\]"):
        create_app(settings, _recommender(), variants="control:100", load_model=False)


# -- the pipeline -------------------------------------------------------------------------------


def test_the_pipeline_runs_a_named_policy_with_the_same_exclusions_and_rules() -> None:
    pipeline = Pipeline(SNAPSHOT, features=_features(["u1"]), sources=SOURCES)
    query = Query("u1", "s-u1", 10, ("i0",))
    models = Models(None, ReverseRanker())

    ranked = pipeline.recommend(query, models, blocked={"i2"})
    popular = pipeline.recommend(query, models, blocked={"i2"}, policy="popular")
    no_ranker = pipeline.recommend(query, models, blocked={"i2"}, policy="no_ranker")

    # The ranker ranks the full pipeline: highest item numbers first.
    assert [c.item_id for c in ranked.items] == [f"i{n}" for n in range(39, 29, -1)]
    assert ranked.items[0].contributions == {"item_number": 39.0}
    # The popularity baseline: its one source, no ranker, the query's, the caller's and the
    # session's exclusions (i0, i2, i1), the category cap.
    assert [c.item_id for c in popular.items] == _popular_expected({"i0", "i1", "i2"})
    assert set(popular.candidates) == {"popular"} and popular.degraded_parts == []
    assert {c.source for c in popular.items} == {"popular"}
    # Every source, by their blend: co-occurrence's i30 leads, no ranker is not a degradation.
    assert no_ranker.items[0].item_id == "i30" and set(no_ranker.candidates) == set(SOURCES)
    assert no_ranker.degraded_parts == [] and "item_number" not in no_ranker.items[0].contributions
    blend_only = Pipeline(
        SNAPSHOT, features=_features(["u1"]), sources=SOURCES, ranker_expected=False
    ).recommend(query, Models(), blocked={"i2"})
    assert [c.item_id for c in no_ranker.items] == [c.item_id for c in blend_only.items]


def test_an_unknown_policy_names_the_policies() -> None:
    pipeline = Pipeline(SNAPSHOT, sources=SOURCES)
    with pytest.raises(ValueError, match="unknown policy 'best'; choose from pipeline, no_ranker"):
        pipeline.recommend(Query("u1", None, 5), Models(), policy="best")


def test_the_popular_policy_answers_even_when_the_sources_leave_popular_out() -> None:
    pipeline = Pipeline(SNAPSHOT, features=_features(["u1"]), sources=["cooccurrence"])
    result = pipeline.recommend(Query("u1", "s-u1", 10), Models(), policy="popular")
    assert [c.item_id for c in result.items] == _popular_expected({"i1"})


# -- serving ------------------------------------------------------------------------------------


def _app(tmp_path: Path, variants: Variants | LiveVariants | None = None) -> Flask:
    settings = private_settings(
        tmp_path, api_keys="", ab_variants="control:50,base:50", ab_policies="base:popular"
    )
    users = [f"user-{i}" for i in range(2_000)]
    return create_app(
        settings,
        _recommender(users),
        variants=variants,
        impressions=_Impressions(),  # type: ignore[arg-type]
        load_model=False,
    )


def _get(app: Flask, user: str) -> dict[str, Any]:
    resp = app.test_client().get(f"/recommend?user_id={user}&session_id=s-{user}&k=10&exclude=i0")
    assert resp.status_code == 200, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def test_each_variant_is_served_its_policy_named_in_the_response_and_impression(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path)
    variants = app.extensions[EXTENSION].variants
    base = Variants.parse("control:50,base:50")
    control_user, base_user = _users_of(base, "control", 1)[0], _users_of(base, "base", 1)[0]
    app.extensions[EXTENSION].recommender.purchases.add(base_user, "i2")
    app.extensions[EXTENSION].recommender.purchases.add(control_user, "i2")

    control = _get(app, control_user)
    popular = _get(app, base_user)
    emitted = app.extensions[EXTENSION].impressions.emitted

    assert variants.policy("control") == "pipeline" and variants.policy("base") == "popular"
    assert (control["variant"], control["policy"]) == ("control", "pipeline")
    assert (popular["variant"], popular["policy"]) == ("base", "popular")
    assert [(r["variant"], r["policy"]) for r in emitted] == [
        ("control", "pipeline"),
        ("base", "popular"),
    ]
    # The control's list is the ranker's; the base's the popular items, with the exclusions
    # (the query's i0, the session's purchase i1, this process's record of the purchase i2).
    assert [i["item_id"] for i in control["items"]] == [f"i{n}" for n in range(39, 29, -1)]
    assert [i["item_id"] for i in popular["items"]] == _popular_expected({"i0", "i1", "i2"})
    assert [i["item_id"] for i in emitted[1]["items"]] == [i["item_id"] for i in popular["items"]]
    assert set(popular["candidates"]) == {"popular"} and not popular["degraded"]


def test_a_switched_off_variants_users_get_the_controls_policy(tmp_path: Path) -> None:
    base = Variants.parse("control:50,base:50", policies="base:popular")
    path = tmp_path / "variants.json"
    clock = _Clock()
    app = _app(tmp_path, LiveVariants(base, path, clock=clock))
    user = _users_of(base, "base", 1)[0]
    before = _get(app, user)
    assert (before["variant"], before["policy"]) == ("base", "popular")

    write_override(path, {"weights": {"base": 0}, "changes": []})
    os.utime(path, ns=(1, 1))  # a distinct mtime even on a coarse clock
    clock.now = 1.5  # past the file's check interval
    after = _get(app, user)
    assert (after["variant"], after["policy"]) == ("control", "pipeline")
    assert [i["item_id"] for i in after["items"]] == [f"i{n}" for n in range(39, 29, -1)]
    record = app.extensions[EXTENSION].impressions.emitted[-1]
    assert (record["variant"], record["policy"]) == ("control", "pipeline")


def test_openapi_describes_the_policy_field(tmp_path: Path) -> None:
    spec = _app(tmp_path).test_client().get("/openapi.json").get_json()
    policy = spec["components"]["schemas"]["Recommendation"]["properties"]["policy"]
    assert policy["enum"] == list(POLICIES)


def test_the_salt_setting_reshuffles_the_split_and_is_validated(tmp_path: Path) -> None:
    users = [f"user-{i}" for i in range(2_000)]
    first = Variants.parse("control:50,base:50")
    second = Variants.parse("control:50,base:50", salt="experiment-2")
    moved = sum(first.assign(u) != second.assign(u) for u in users)
    # An independent split moves about half of the users; the same salt moves none.
    assert 800 < moved < 1200
    assert [Variants.parse("control:50,base:50", salt="experiment-2").assign(u) for u in users] == [
        second.assign(u) for u in users
    ]

    # Serving takes it from LAMBDAREC_AB_SALT.
    settings = private_settings(tmp_path, api_keys="", ab_variants="control:50,base:50")
    salted = settings.model_copy(update={"ab_salt": "experiment-2"})
    app = create_app(salted, _recommender(users), impressions=_Impressions(), load_model=False)  # type: ignore[arg-type]
    served = app.extensions[EXTENSION].variants
    assert [served.assign(u) for u in users] == [second.assign(u) for u in users]

    with pytest.raises(ValidationError, match="ab_salt"):
        Settings(ab_salt="two words")
