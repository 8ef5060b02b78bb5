"""A/B variant rankers (issue #22 item 5): ``LAMBDAREC_AB_RANKERS``'s parsing and validation, and
/recommend ranking a listed variant's lists by its own DeepFM (the champion's retrieval kept),
named in the response and the impression."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from lambdarec.config import Settings, parse_ab_rankers
from lambdarec.harness.platform import private_settings
from lambdarec.inference.ranker import EXPORT_DIR, META_FILE
from lambdarec.recommend.snapshot import Snapshot
from serving import champion, create_app
from serving.ab import Variants
from serving.champion import load_variant_rankers, ranker_name
from serving.recommender import Recommender
from serving.state import EXTENSION

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import numpy as np
    from flask import Flask

N_ITEMS = 30
SNAPSHOT_ITEMS = {f"i{n}": f"c{n % 5}" for n in range(N_ITEMS)}
SOURCES = ["popular"]


def _number(item_id: str) -> int:
    return int(item_id[1:])


class _Ranker:
    """A ranker stand-in: ``sign`` +1 likes high item numbers, -1 low ones."""

    sources: Sequence[str] = tuple(SOURCES)

    def __init__(self, sign: float, folder: Path | None = None) -> None:
        self.sign, self.folder = sign, folder

    def score(
        self,
        features: Mapping[str, Any],
        item_ids: Sequence[str],
        categories: Sequence[str | None],
        source_scores: np.ndarray,
        source_ranks: np.ndarray,
    ) -> list[tuple[float, dict[str, float]]]:
        return [(self.sign * _number(i), {"item_number": self.sign * _number(i)}) for i in item_ids]


class _Export:
    """Stands in for DeepFMRanker: a folder with ``serving/ranker.json`` loads as the low-numbers
    ranker, one whose file says ``broken`` raises as an unreadable export does."""

    @classmethod
    def from_model_dir(cls, deepfm_dir: Path, vocabulary: Any = None) -> _Ranker | None:
        meta = deepfm_dir / EXPORT_DIR / META_FILE
        if not meta.is_file():
            return None
        if meta.read_text() == "broken":
            raise ValueError(f"{meta}: not JSON")
        return _Ranker(-1.0, deepfm_dir)


def _export(root: Path, content: str = "{}") -> Path:
    folder = root / "deepfm"
    (folder / EXPORT_DIR).mkdir(parents=True)
    (folder / EXPORT_DIR / META_FILE).write_text(content)
    return folder


class _Impressions:
    def __init__(self) -> None:
        self.emitted: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.emitted.append(record)


# -- the setting --------------------------------------------------------------------------------


def test_rankers_parse_to_a_map_of_the_variants_listed(tmp_path: Path) -> None:
    folder = _export(tmp_path / "run-new")
    assert parse_ab_rankers("") == {}
    assert parse_ab_rankers(f" treatment:{folder} ", ["control", "treatment"]) == {
        "treatment": folder
    }
    settings = Settings(ab_variants="control:50,treatment:50", ab_rankers=f"treatment:{folder}")
    assert settings.ab_rankers == f"treatment:{folder}"
    assert ranker_name(folder) == ranker_name(folder / EXPORT_DIR) == "run-new"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("treatment", r"entry 'treatment' is not variant:folder"),
        ("treatment:{f},treatment:{f}", r"names variant 'treatment' twice"),
        ("gone:{f}", r"variant\(s\) \['gone'\] that are not in the A/B variants"),
        ("treatment:{f}/nowhere", r"folder .*/nowhere, which does not exist"),
    ],
    ids=["malformed", "twice", "unknown-variant", "missing-folder"],
)
def test_a_bad_setting_is_a_one_line_error_naming_it(
    spec: str, message: str, tmp_path: Path
) -> None:
    spec = spec.format(f=_export(tmp_path))
    with pytest.raises(ValueError, match=message) as info:
        parse_ab_rankers(spec, ["control", "treatment"])
    assert str(info.value).startswith("LAMBDAREC_AB_RANKERS") and "\n" not in str(info.value)
    with pytest.raises(ValidationError, match=message):
        Settings(ab_variants="control:50,treatment:50", ab_rankers=spec)


def test_an_unreadable_or_absent_export_or_an_unranked_policy_fails_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(champion, "DeepFMRanker", _Export)
    names = ["control", "treatment"]
    broken = _export(tmp_path / "broken", "broken")
    empty = tmp_path / "empty"
    empty.mkdir()
    good = _export(tmp_path / "good")
    cases = [
        (f"treatment:{broken}", names, r"export of variant 'treatment' .* cannot be read"),
        (f"treatment:{empty}", names, r"holds no serving/ranker.json"),
        (f"treatment:{good}", ["control"], r"gives variant\(s\) \['treatment'\] a ranker, but"),
    ]
    for spec, ranked, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            load_variant_rankers(spec, names, ranked=ranked)
        assert str(info.value).startswith("LAMBDAREC_AB_RANKERS") and "\n" not in str(info.value)
    # The export folder itself is accepted as well as the run's deepfm/ folder.
    loaded = load_variant_rankers(f"treatment:{good / EXPORT_DIR}", names)
    assert loaded["treatment"].name == "good" and loaded["treatment"].ranker.folder == good


# -- serving ------------------------------------------------------------------------------------


def _app(tmp_path: Path, rankers: str, policies: str = "") -> Flask:
    settings = private_settings(
        tmp_path,
        api_keys="",
        ab_variants="control:50,treatment:50",
        ab_policies=policies,
        ab_rankers=rankers,
    )
    items = Snapshot.from_items(
        SNAPSHOT_ITEMS, [(f"i{n}", float(N_ITEMS - n)) for n in range(N_ITEMS)]
    )
    recommender = Recommender(items, ranker=_Ranker(1.0), sources=SOURCES)
    return create_app(
        settings,
        recommender,
        impressions=_Impressions(),  # type: ignore[arg-type]
        load_model=False,
    )


def _get(app: Flask, user: str) -> dict[str, Any]:
    resp = app.test_client().get(f"/recommend?user_id={user}&k=5")
    assert resp.status_code == 200, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def _user_of(name: str) -> str:
    variants = Variants.parse("control:50,treatment:50")
    return next(u for u in (f"user-{i}" for i in range(100)) if variants.assign(u) == name)


def test_a_listed_variant_is_ranked_by_its_own_ranker_named_in_response_and_impression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(champion, "DeepFMRanker", _Export)
    app = _app(tmp_path, f"treatment:{_export(tmp_path / 'run-exposure')}")

    control = _get(app, _user_of("control"))
    treatment = _get(app, _user_of("treatment"))
    emitted = app.extensions[EXTENSION].impressions.emitted

    # The champion's ranker likes high numbers, the treatment's own low ones; the candidates
    # (the popular source, the rules) are the same.
    assert [i["item_id"] for i in control["items"]][:2] == ["i29", "i28"]
    assert [i["item_id"] for i in treatment["items"]][:2] == ["i0", "i1"]
    assert (control["ranker"], treatment["ranker"]) == ("champion", "run-exposure")
    assert [(r["variant"], r["ranker"]) for r in emitted] == [
        ("control", "champion"),
        ("treatment", "run-exposure"),
    ]
    # No part is degraded by the swap: the same as the control's (no query tower here).
    assert treatment["degraded_parts"] == control["degraded_parts"]
    assert "ranker" not in treatment["degraded_parts"]


def test_an_unranked_policy_names_no_ranker_and_openapi_documents_the_field(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, "", policies="treatment:popular")
    assert _get(app, _user_of("treatment"))["ranker"] is None
    spec = app.test_client().get("/openapi.json").get_json()
    assert "ranker" in spec["components"]["schemas"]["Recommendation"]["properties"]


def test_the_app_refuses_to_start_with_an_unreadable_ranker(tmp_path: Path) -> None:
    # The real loader on a folder with a broken export: one line, naming the setting.
    folder = _export(tmp_path / "bad", "not json")
    with pytest.raises(ValueError, match=r"^LAMBDAREC_AB_RANKERS: the DeepFM export of variant"):
        _app(tmp_path, f"treatment:{folder}")
