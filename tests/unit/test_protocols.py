"""The evaluation protocols (loo, session, temporal) on tiny hand-made data: which interaction is a
test, validation or training target, what each query's history and seen items are, the refit
dataset, the one-line errors of the evaluation program and its metrics table."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from lambdarec.data.loaders import SrgnnSplit, load_interactions, load_sequences
from lambdarec.models import evaluate as E
from lambdarec.models import metrics as M
from lambdarec.models.data import (
    Dataset,
    DatasetError,
    Examples,
    build_from_events,
    build_from_srgnn,
    load_dataset,
)

if TYPE_CHECKING:
    import pandas as pd

EVALUATE = Path(__file__).resolve().parents[2] / "include" / "models" / "evaluate.py"

# u3 has 2 items (no query: all training); u4's repeated 'a' collapses (a b c).
SEQUENCES = "u1 a b c d e\nu2 f g h\nu3 i j\nu4 a a b c\n"

DAY = 86_400
T0 = 1_700_006_400  # 2023-11-15T00:00:00Z, a UTC midnight
#: (session, user, item, seconds after T0): day 0 trains, day 1 validates, day 2 tests.
EVENTS = [
    ("s1", "u1", "a", 100),
    ("s1", "u1", "b", 200),
    ("s1", "u1", "c", 300),
    ("s2", "u1", "c", DAY + 100),
    ("s2", "u1", "d", DAY + 200),
    ("s3", "u2", "e", 2 * DAY + 100),
    ("s3", "u2", "f", 2 * DAY + 200),
    ("s3", "u2", "g", 2 * DAY + 300),
    # a session across midnight into the test day
    ("s4", "u3", "h", 2 * DAY - 1200),
    ("s4", "u3", "i", 2 * DAY - 600),
    ("s4", "u3", "j", 2 * DAY + 300),
]


def queries(d: Dataset, ex: Examples) -> list[tuple[str, str, list[str]]]:
    """(user, target, history most recent first) of each example, by raw ids, sorted."""
    ids = d.catalog.item_ids
    out = []
    for n in range(len(ex)):
        user = str(d.user_ids[ex.user[n] - 1]) if ex.user[n] > 0 else "?"
        hist = [str(ids[i]) for i in ex.hist[n] if i >= 0]
        out.append((user, str(ids[ex.target[n]]), hist))
    return sorted(out)


def seen_ids(d: Dataset, ex: Examples) -> list[set[str]]:
    assert ex.seen is not None
    ids = d.catalog.item_ids
    return [{str(ids[i]) for i in ex.seen[n].indices} for n in range(len(ex))]


def event_items(d: Dataset, mask: np.ndarray | None = None) -> list[str]:
    ev = d.all_events if mask is None else d.all_events.subset(mask)
    return sorted(str(d.catalog.item_ids[i]) for i in ev.item)


@pytest.fixture
def sequences_file(tmp_path: Path) -> Path:
    path = tmp_path / "seq.txt"
    path.write_text(SEQUENCES)
    return path


@pytest.fixture
def events(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "events.csv"
    rows = [f"{s},{u},{i},{T0 + t}" for s, u, i, t in EVENTS]
    path.write_text("session_id,user_id,item_id,ts\n" + "\n".join(rows) + "\n")
    return load_interactions(path)


# -- loo ------------------------------------------------------------------------------------
def test_loo_holds_out_the_last_two_items_of_each_user(sequences_file: Path) -> None:
    d = build_from_events(load_sequences(sequences_file), name="seq", protocol="loo")
    assert queries(d, d.test) == [
        ("u1", "e", ["d", "c", "b", "a"]),  # the validation item d is in the test history
        ("u2", "h", ["g", "f"]),
        ("u4", "c", ["b", "a"]),
    ]
    assert queries(d, d.valid) == [
        ("u1", "d", ["c", "b", "a"]),
        ("u2", "g", ["f"]),
        ("u4", "b", ["a"]),
    ]
    # targets from the 2nd to the third-last item; u3 (2 items) is all training
    assert queries(d, d.train) == [("u1", "b", ["a"]), ("u1", "c", ["b", "a"]), ("u3", "j", ["i"])]
    assert event_items(d, np.ones(len(d.all_events.item), dtype=bool)) == sorted("abcdefghijabc")
    assert sorted(str(d.catalog.item_ids[i]) for i in d.train_events.item) == sorted("abcfija")
    assert d.split["kind"] == "loo" and d.split["users_without_query"] == 1
    assert d.split["collapsed_repeats"] == 1


def test_loo_masks_the_users_whole_history_by_default(sequences_file: Path) -> None:
    d = build_from_events(load_sequences(sequences_file), name="seq", protocol="loo")
    assert d.split["mask_seen"] is True and d.train.seen is None
    by_target = dict(zip(d.catalog.item_ids[d.test.target], seen_ids(d, d.test), strict=True))
    assert by_target == {"e": set("abcd"), "h": set("fg"), "c": set("ab")}
    valid = dict(zip(d.catalog.item_ids[d.valid.target], seen_ids(d, d.valid), strict=True))
    assert valid == {"d": set("abc"), "g": {"f"}, "b": {"a"}}
    off = build_from_events(
        load_sequences(sequences_file), name="seq", protocol="loo", mask_seen=False
    )
    assert off.test.seen is None and off.valid.seen is None


def test_loo_history_len_limits_the_history(sequences_file: Path) -> None:
    d = build_from_events(load_sequences(sequences_file), name="seq", protocol="loo", max_len=2)
    assert d.test.hist.shape[1] == 2
    assert ("u1", "e", ["d", "c"]) in queries(d, d.test)
    # the seen items are the whole history, not only the last max_len
    assert set("abcd") in seen_ids(d, d.test)


def test_masked_items_leave_the_ranking(sequences_file: Path) -> None:
    d = build_from_events(load_sequences(sequences_file), name="seq", protocol="loo")

    def everything_equal(ex: Examples) -> np.ndarray:
        return np.zeros((len(ex), d.n_items), dtype=np.float32)

    topk, _ = E.ranker_topk(everything_equal, d.test, d.n_items)
    ids = d.catalog.item_ids
    for row, seen in zip(topk, seen_ids(d, d.test), strict=True):
        ranked = [str(ids[i]) for i in row]
        assert set(ranked[-len(seen) :]) == seen  # seen items are last
        assert not seen & set(ranked[: d.n_items - len(seen)])


def test_mask_seen_sets_minus_infinity() -> None:
    import scipy.sparse as sp

    scores = np.arange(8, dtype=np.float32).reshape(2, 4)
    seen = sp.csr_matrix(np.array([[0, 0, 0, 1], [1, 1, 0, 0]], dtype=bool))
    out = M.mask_seen(scores, seen)
    assert np.isneginf(out).tolist() == [[False, False, False, True], [True, True, False, False]]
    assert M.top_k(out, 2).tolist() == [[2, 1], [3, 2]]
    assert M.mask_seen(scores, None) is scores
    readonly = np.zeros((1, 2), dtype=np.float32)
    readonly.flags.writeable = False
    assert np.isneginf(M.mask_seen(readonly, sp.csr_matrix(np.array([[1, 0]])))).sum() == 1
    with pytest.raises(ValueError, match="seen is"):
        M.mask_seen(scores, sp.csr_matrix((3, 4)))


def test_subset_sample_and_concat_keep_seen_aligned(sequences_file: Path) -> None:
    d = build_from_events(load_sequences(sequences_file), name="seq", protocol="loo")
    full = dict(zip(d.test.target.tolist(), seen_ids(d, d.test), strict=True))
    for ex in (d.test.subset(np.array([2, 0])), d.test.sample(2, seed=3)):
        assert dict(zip(ex.target.tolist(), seen_ids(d, ex), strict=True)) == {
            t: full[t] for t in ex.target.tolist()
        }
    both = Examples.concat(d.valid, d.test)
    assert both.seen is not None and both.seen.shape == (6, d.n_items)
    assert Examples.concat(d.train, d.test).seen is None


def test_loo_without_any_user_of_three_items_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("u1 a b\nu2 c c d\n")  # c c collapses: nobody has 3 items
    with pytest.raises(DatasetError, match=r"no user has 3 or more items.*--protocol temporal"):
        build_from_events(load_sequences(path), name="short", protocol="loo")


def test_sequences_have_no_time_for_temporal_or_session(sequences_file: Path) -> None:
    for protocol in ("temporal", "session"):
        with pytest.raises(DatasetError, match="no timestamps.*use --protocol loo"):
            build_from_events(load_sequences(sequences_file), name="seq", protocol=protocol)  # type: ignore[arg-type]


# -- temporal -------------------------------------------------------------------------------
def test_temporal_splits_by_the_day_of_the_target(events: pd.DataFrame) -> None:
    d = build_from_events(events, name="ev", protocol="temporal")
    assert queries(d, d.train) == [("u1", "b", ["a"]), ("u1", "c", ["b", "a"])]
    # i (day 1) validates; s4's j (day 2) is a test target with i and h in its history; u1's
    # second session starts on day 1: a query without session context (u1 has a history)
    assert queries(d, d.valid) == [("?", "i", ["h"]), ("u1", "c", []), ("u1", "d", ["c"])]
    assert queries(d, d.test) == [("?", "f", ["e"]), ("?", "g", ["f", "e"]), ("?", "j", ["i", "h"])]
    assert event_items(d, d.all_events.ts < d.split["valid_start_ms"]) == list("abc")  # type: ignore[operator]
    assert sorted(str(d.catalog.item_ids[i]) for i in d.train_events.item) == list("abc")
    assert d.split["mask_seen"] is False and d.test.seen is None


def test_temporal_mask_seen_is_the_session_prefix(events: pd.DataFrame) -> None:
    d = build_from_events(events, name="ev", protocol="temporal", mask_seen=True)
    by_target = dict(zip(d.catalog.item_ids[d.test.target], seen_ids(d, d.test), strict=True))
    assert by_target == {"f": {"e"}, "g": {"e", "f"}, "j": {"h", "i"}}


def test_temporal_refit_dataset_trains_on_validation_too(events: pd.DataFrame) -> None:
    d = build_from_events(events, name="ev", protocol="temporal")
    r = d.for_test()
    assert len(r.train) == len(d.train) + len(d.valid)
    assert queries(r, r.train) == sorted(queries(d, d.train) + queries(d, d.valid))
    # every interaction before the test day: s1, s2, and s4's h and i
    assert sorted(str(r.catalog.item_ids[i]) for i in r.train_events.item) == sorted("abccdhi")
    assert (r.train_events.ts < d.split["test_start_ms"]).all()  # type: ignore[operator]
    assert r.test is d.test and r.split["refit"] is True
    assert r.for_test() is r


def test_temporal_too_few_days_names_the_options(events: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match=r"span 3 day\(s\).*--test-days/--valid-days"):
        build_from_events(events, name="ev", protocol="temporal", test_days=2)


# -- session --------------------------------------------------------------------------------
def test_session_split_keeps_whole_sessions(events: pd.DataFrame) -> None:
    d = build_from_events(events, name="ev", protocol="session")
    # s4 ends on the test day: all of it is test, its day-1 items are neither valid nor train
    assert queries(d, d.test) == [
        ("?", "f", ["e"]),
        ("?", "g", ["f", "e"]),
        ("?", "i", ["h"]),
        ("?", "j", ["i", "h"]),
    ]
    assert queries(d, d.valid) == [("u1", "c", []), ("u1", "d", ["c"])]
    assert queries(d, d.train) == [("u1", "b", ["a"]), ("u1", "c", ["b", "a"])]
    assert sorted(str(d.catalog.item_ids[i]) for i in d.train_events.item) == list("abc")
    assert d.split["test_sessions"] == 2 and d.split["valid_sessions"] == 1
    refit = d.for_test()
    assert sorted(str(d.catalog.item_ids[i]) for i in refit.train_events.item) == list("abccd")


def test_session_mask_seen_is_the_own_prefix(events: pd.DataFrame) -> None:
    d = build_from_events(events, name="ev", protocol="session", mask_seen=True)
    by_target = dict(zip(d.catalog.item_ids[d.test.target], seen_ids(d, d.test), strict=True))
    assert by_target == {"f": {"e"}, "g": {"e", "f"}, "i": {"h"}, "j": {"h", "i"}}


def test_srgnn_split_is_the_session_protocol_and_can_mask() -> None:
    split = SrgnnSplit(
        train_sessions=[[1, 2, 3], [2, 4], [3, 1, 4]], test=[([4, 2], 3), ([1, 1, 2], 4)]
    )
    d = build_from_srgnn(split, valid_share=1 / 3, mask_seen=True)
    assert d.split["protocol"] == "session" and d.split["kind"] == "srgnn"
    assert [sorted(s) for s in seen_ids(d, d.test)] == [["2", "4"], ["1", "2"]]
    assert [sorted(s) for s in seen_ids(d, d.valid)] == [["3"], ["1", "3"]]
    refit = d.for_test()
    assert len(refit.train) == len(d.train) + len(d.valid) == 5
    assert len(refit.train_events.item) == 8
    assert build_from_srgnn(split).test.seen is None


# -- load_dataset ---------------------------------------------------------------------------
def test_defaults_follow_the_data_not_the_name(
    sequences_file: Path, tmp_path: Path, events: pd.DataFrame
) -> None:
    d = load_dataset(str(sequences_file))
    assert (d.split["protocol"], d.split["mask_seen"], d.name) == ("loo", True, "seq")
    csv = tmp_path / "diginetica.csv"  # named like a dataset, still an event file
    events.rename(columns={"ts": "timestamp"}).to_csv(csv, index=False)
    d = load_dataset(str(csv))
    assert (d.split["protocol"], d.split["mask_seen"]) == ("temporal", False)
    d = load_dataset(str(csv), protocol="session", mask_seen=True, max_len=3)
    assert (d.split["protocol"], d.split["mask_seen"], d.test.hist.shape[1]) == ("session", True, 3)


def test_a_small_test_set_is_announced(
    sequences_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lambdarec.models.data"):
        build_from_events(load_sequences(sequences_file), name="seq", protocol="loo")
    assert "3 test queries: the metrics are noise" in caplog.text


# -- the evaluation program -----------------------------------------------------------------
def _evaluate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--protocol", "bogus"], 2, "'bogus' is not one of 'loo', 'session', 'temporal'"),
        (["--dataset", "diginetica", "--protocol", "loo"], 1, "only --protocol session"),
        (["--dataset", "no-such-file.csv"], 1, "unknown dataset 'no-such-file.csv'"),
    ],
)
def test_evaluate_errors_are_one_line(
    args: list[str], code: int, says: str, tmp_path: Path
) -> None:
    done = _evaluate(*args, cwd=tmp_path)
    assert done.returncode == code
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert says in done.stderr
    assert done.stdout == ""


def test_evaluate_split_error_is_one_error_line(sequences_file: Path, tmp_path: Path) -> None:
    done = _evaluate("--dataset", str(sequences_file), "--protocol", "temporal", cwd=tmp_path)
    assert done.returncode == 1
    # the loader's log lines come first; then one line says what failed
    said = [line for line in done.stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(said) == 1 and said[0].startswith("error: "), done.stderr
    assert said[0].endswith("a temporal split cannot be made: use --protocol loo")
    assert "Traceback" not in done.stderr and "╭" not in done.stderr


def test_evaluate_prints_a_table_and_writes_the_json(sequences_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = _evaluate(
        "--dataset", str(sequences_file), "--no-models", "--out", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("seq: protocol loo, seen items masked, 3 test queries")
    assert lines[1].split()[:4] == ["model", "HR@10", "HR@20", "MRR@20"]
    assert any(line.startswith("most_popular ") for line in lines)
    assert f"metrics: {out / 'metrics.json'}" in lines
    assert (out / "metrics.json").exists()
    assert "3 test queries: the metrics are noise" in done.stderr
    assert "cuda" not in done.stderr.lower()
    as_json = _evaluate(
        "--dataset", str(sequences_file), "--no-models", "--out", str(out), "--json", cwd=tmp_path
    )
    import json

    assert json.loads(as_json.stdout)["split"]["protocol"] == "loo"
