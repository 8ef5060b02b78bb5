"""Loaders against the real shared datasets, and the generic loader's round trips and errors."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from lambdarec.config import get_settings
from lambdarec.data.canonical import check_canonical
from lambdarec.data.generator import GeneratorConfig, generate_events
from lambdarec.data.loaders import (
    AMAZON_SEQUENCES,
    LoadError,
    expand_sessions,
    load_diginetica_raw,
    load_interactions,
    load_sequences,
    load_srgnn,
    load_taobao,
    looks_like_sequences,
)

if TYPE_CHECKING:
    from pathlib import Path

DATA = get_settings().shared_data_dir
needs_data = pytest.mark.skipif(
    not (DATA / "taobao_userbehavior").is_dir(), reason=f"shared datasets not found in {DATA}"
)


# -- Taobao ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def taobao() -> pd.DataFrame:
    return load_taobao()


@needs_data
def test_taobao_counts_match_the_readme(taobao: pd.DataFrame) -> None:
    check_canonical(taobao)
    assert len(taobao) == 84_475
    assert taobao["user_id"].nunique() == 815
    assert taobao["item_id"].nunique() == 55_368
    assert taobao["category"].nunique() == 2_914
    counts = taobao["event_type"].value_counts().to_dict()
    # The README counts pv 75,873 including the truncated last line (a pv); fav 2,356 -> view.
    assert counts == {"view": 75_873 - 1 + 2_356, "add_to_cart": 4_497, "purchase": 1_750}
    assert taobao["price"].isna().all()
    assert taobao["ts"].is_monotonic_increasing
    buyers = taobao.loc[taobao["event_type"] == "purchase", "user_id"].nunique()
    assert buyers == 559


@needs_data
def test_taobao_truncated_line_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lambdarec.data.loaders"):
        df = load_taobao()
    report = df.attrs["load_report"]
    assert report["rows_read"] == 84_476 and report["rows_out"] == 84_475
    assert sum(report["dropped"].values()) == 1
    assert report["mapped"] == {"fav->view": 2_356}
    assert "line 84476" in caplog.text and "truncated" in caplog.text


@needs_data
def test_taobao_official_window_and_sessions() -> None:
    df = load_taobao(official_window=True)
    assert len(df) == 84_475 - 35
    assert (
        df.attrs["load_report"]["dropped"][
            "outside the official window [2017-11-25, 2017-12-04) UTC+8"
        ]
        == 35
    )
    assert df["session_id"].nunique() == 14_097  # 30-minute inactivity gap, as in the README
    assert df["ts"].min() >= pd.Timestamp("2017-11-24 16:00", tz="UTC")
    assert df["ts"].max() < pd.Timestamp("2017-12-03 16:00", tz="UTC")


@needs_data
def test_taobao_session_ids_and_event_ids(taobao: pd.DataFrame) -> None:
    first = taobao[taobao["event_id"] == "tb-1"].iloc[0]  # the README's first sample row
    assert (first["user_id"], first["item_id"], first["category"]) == ("1", "2268318", "2520377")
    assert first["ts"] == pd.Timestamp(1511544070, unit="s", tz="UTC")
    by_session = taobao.sort_values(["session_id", "ts"], kind="stable")
    gaps = by_session.groupby("session_id")["ts"].diff().dropna()
    assert gaps.max() <= pd.Timedelta(minutes=30)
    assert (taobao["session_id"].str.split("-").str[0] == taobao["user_id"]).all()


@needs_data
def test_taobao_fav_can_be_dropped_with_a_count() -> None:
    df = load_taobao(fav="drop")
    assert len(df) == 84_475 - 2_356
    assert df.attrs["load_report"]["dropped"]["fav (fav='drop')"] == 2_356


# -- Diginetica -----------------------------------------------------------------------------
@needs_data
def test_diginetica_raw_sample_counts() -> None:
    df = load_diginetica_raw()
    check_canonical(df)
    assert len(df) == 12_391
    assert df["session_id"].nunique() == 2_986
    assert df["item_id"].nunique() == 7_139
    assert (df["event_type"] == "view").all()
    assert (~df["user_id"].str.startswith("anon-")).sum() == 4_710
    assert df["ts"].min().date().isoformat() == "2016-01-03"
    assert df["ts"].is_monotonic_increasing
    # Session 1, first click: 2016-05-09 + 526,309 ms; anonymous.
    row = df[(df["session_id"] == "1") & (df["item_id"] == "81766")].iloc[0]
    assert row["ts"] == pd.Timestamp("2016-05-09", tz="UTC") + pd.Timedelta(milliseconds=526_309)
    assert row["user_id"] == "anon-1"
    assert df.groupby("session_id").size().median() == 3


@needs_data
def test_srgnn_split_counts() -> None:
    split = load_srgnn()
    assert len(split.train_sessions) == 186_670
    assert split.n_train_clicks == 906_140
    assert len(split.test) == 60_858
    assert split.n_items == 43_097
    assert split.test[0] == ([21553, 20071, 8762, 21566, 6381], 21566)
    pairs = expand_sessions(split.train_sessions)
    assert len(pairs) == 719_470


def test_expand_sessions_longest_prefix_first() -> None:
    assert expand_sessions([[1, 2, 3], [4], [5, 6]]) == [([1, 2], 3), ([1], 2), ([5], 6)]


# -- generic --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def canonical() -> pd.DataFrame:
    return generate_events(
        GeneratorConfig(n_users=200, n_items=500, n_categories=10, days=2, n_events=3_000, seed=11)
    )


def _export(df: pd.DataFrame) -> pd.DataFrame:
    """The canonical table in a typical foreign spelling."""
    return pd.DataFrame(
        {
            "userId": df["user_id"],
            "sessionId": df["session_id"],
            "productId": df["item_id"],
            "timestamp": df["ts"].astype("int64"),
            "Action": df["event_type"].map(
                {
                    "view": "pv",
                    "add_to_cart": "cart",
                    "remove_from_cart": "remove",
                    "purchase": "buy",
                }
            ),
            "category": df["category"],
            "price": df["price"],
            "event_id": df["event_id"],
        }
    )


def test_generic_csv_round_trip(canonical: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    _export(canonical).to_csv(path, index=False)
    loaded = load_interactions(path, item_col="productId", event_type_col="Action")
    check_canonical(loaded)
    pd.testing.assert_frame_equal(loaded, canonical)


def test_generic_parquet_round_trip_with_datetime_and_iso(
    canonical: pd.DataFrame, tmp_path: Path
) -> None:
    exported = _export(canonical).drop(columns=["timestamp"])
    exported["event_time"] = canonical["ts"]
    path = tmp_path / "events.parquet"
    exported.to_parquet(path)
    loaded = load_interactions(path, item_col="productId", event_type_col="Action")
    pd.testing.assert_frame_equal(loaded, canonical)

    iso = exported.assign(event_time=canonical["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f%z"))
    iso_path = tmp_path / "iso.csv"
    iso.to_csv(iso_path, index=False, sep=";")
    pd.testing.assert_frame_equal(
        load_interactions(iso_path, item_col="productId", event_type_col="Action"), canonical
    )


def test_generic_minimal_file_gets_sessions_views_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "minimal.csv"
    path.write_text(
        "user,item,time\n"
        "a,1,1700000000\n"
        "a,2,1700000600\n"
        "a,3,1700009000\n"  # > 30 min later: a new session
        "b,1,1700000100\n"
    )
    df = load_interactions(path)
    check_canonical(df)
    assert df["event_type"].eq("view").all()
    assert df["session_id"].tolist() == ["a-0", "b-0", "a-0", "a-1"]
    # ids come from the events themselves: the same on a reload, distinct from another file's
    assert df["event_id"].str.fullmatch(r"gen-[0-9a-f]{16}").all() and df["event_id"].is_unique
    assert load_interactions(path)["event_id"].tolist() == df["event_id"].tolist()
    other = tmp_path / "other.csv"
    other.write_text("user,item,time\nc,9,1700000000\na,1,1700000000\n")
    again = load_interactions(other).set_index("item_id")["event_id"]
    assert again["9"] not in set(df["event_id"])
    assert again["1"] == df.loc[df["item_id"].eq("1") & df["user_id"].eq("a"), "event_id"].item()
    assert df["ts"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert df["category"].isna().all() and df["price"].isna().all()


def test_generic_session_only_file_gets_anonymous_users(tmp_path: Path) -> None:
    path = tmp_path / "sessions.csv"
    path.write_text("session_id,item_id,ts\n9,1,1700000000000\n9,2,1700000001000\n")
    df = load_interactions(path, session_gap=timedelta(minutes=5))
    assert df["user_id"].tolist() == ["anon-9", "anon-9"]
    assert df["ts"].iloc[1] == pd.Timestamp(1_700_000_001_000, unit="ms", tz="UTC")


def test_generic_missing_required_column_names_it_and_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user_id,thing,ts\nu,1,1700000000\n")
    with pytest.raises(
        LoadError, match=r"no item column found.*available columns: \['user_id', 'thing', 'ts'\]"
    ):
        load_interactions(path)
    with pytest.raises(LoadError, match=r"item column 'sku' is not in the file"):
        load_interactions(path, item_col="sku")
    with pytest.raises(LoadError, match="no user or session column"):
        path.write_text("item_id,ts\n1,1700000000\n")
        load_interactions(path)


def test_generic_bad_rows_raise_with_counts_and_examples(tmp_path: Path) -> None:
    path = tmp_path / "dirty.csv"
    path.write_text(
        "user_id,item_id,ts,event_type\n"
        "u1,i1,2024-05-01T10:00:00Z,view\n"
        "u1,i2,yesterday,view\n"
        "u1,i3,2024-05-01T10:02:00Z,wishlist\n"
        "u1,i4,2024-05-01T10:03:00Z,wishlist\n"
        "u2,,2024-05-01T10:04:00Z,buy\n"
        "u 3,i5,2024-05-01T10:05:00Z,view\n"
    )
    with pytest.raises(LoadError) as info:
        load_interactions(path)
    message = str(info.value)
    assert "5 of 6 row(s) are invalid" in message
    assert "unparseable or missing timestamp (ts): 1 row(s)" in message and "yesterday" in message
    assert "unknown event type (event_type): 'wishlist' x2" in message
    assert "missing item (item_id): 1 row(s)" in message
    assert "user (user_id) breaks the id rule" in message
    assert "on_invalid='drop'" in message


def test_generic_drop_counts_every_dropped_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dirty.csv"
    path.write_text(
        "user_id,item_id,ts,event_type,price\n"
        "u1,i1,2024-05-01T10:00:00Z,view,1.5\n"
        "u1,i2,yesterday,view,2\n"
        "u1,i3,2024-05-01T10:02:00Z,wishlist,3\n"
        "u1,i4,2024-05-01T10:03:00Z,view,-1\n"
        "u1,i5,2024-05-01T10:04:00Z,fav,\n"
    )
    with caplog.at_level(logging.WARNING, logger="lambdarec.data.loaders"):
        df = load_interactions(path, on_invalid="drop", event_type_map={"fav": "view"})
    assert df["item_id"].tolist() == ["i1", "i5"]
    assert df["price"].iloc[0] == 1.5 and pd.isna(df["price"].iloc[1])
    report = df.attrs["load_report"]
    assert report["rows_read"] == 5 and report["rows_out"] == 2
    assert sum(report["dropped"].values()) == 3
    assert report["mapped"] == {"view->view": 1, "fav->view": 1}
    assert "dropped 1 row(s): unparseable or missing timestamp" in caplog.text
    assert "dropped 1 row(s): price (price) not a finite number >= 0" in caplog.text


def test_generic_event_type_map_must_target_a_canonical_type(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,ts,event_type\nu,i,1700000000,fav\n")
    with pytest.raises(LoadError, match=r"event_type_map\['fav'\] = 'like' is not an event type"):
        load_interactions(path, event_type_map={"fav": "like"})


def test_generic_duplicate_event_ids_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dupes.csv"
    path.write_text("event_id,user_id,item_id,ts\ne1,u,i,1700000000\ne1,u,j,1700000001\n")
    with pytest.raises(LoadError, match="duplicated"):
        load_interactions(path)


def test_generic_empty_session_column_counts_as_absent(tmp_path: Path) -> None:
    # Exports often carry the column with no value; it used to reject every row.
    path = tmp_path / "no_sessions.csv"
    path.write_text(
        "user_id,session_id,item_id,ts\nu1,,i1,1700000000\nu1,,i2,1700000600\nu1,,i3,1700009000\n"
    )
    df = load_interactions(path)
    assert df["session_id"].tolist() == ["u1-0", "u1-0", "u1-1"]  # cut at the 30-minute gap


def test_generic_empty_user_column_counts_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "no_users.csv"
    path.write_text(
        "user_id,session_id,item_id,ts,event_type\n,s9,i1,1700000000,\n,s9,i2,1700000001,\n"
    )
    df = load_interactions(path)
    assert df["user_id"].tolist() == ["anon-s9", "anon-s9"]
    assert df["event_type"].eq("view").all()  # an empty event type column: every row a view
    path.write_text("user_id,session_id,item_id,ts\n,,i1,1700000000\n")
    with pytest.raises(LoadError, match="no user or session column found.*have no value"):
        load_interactions(path)


def test_generic_drop_that_keeps_no_row_fails(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,yesterday\nu 2,i2,1700000000\n")
    with pytest.raises(LoadError, match=r"all 2 row\(s\) are invalid, nothing to load"):
        load_interactions(path, on_invalid="drop")
    path.write_text("user_id,item_id,ts\n")
    with pytest.raises(LoadError, match="no rows"):
        load_interactions(path)


# -- sequences ------------------------------------------------------------------------------
def test_sequences_keep_the_order_with_synthetic_times(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("7 30 10 20\n\n8 10  40\n")
    df = load_sequences(path)
    check_canonical(df)
    assert df["item_id"].tolist() == ["30", "10", "20", "10", "40"]
    assert df["user_id"].tolist() == ["7", "7", "7", "8", "8"]
    assert (df["session_id"] == df["user_id"]).all() and df["event_type"].eq("view").all()
    assert df["ts"].is_monotonic_increasing and df["ts"].is_unique
    assert df["ts"].iloc[0] == pd.Timestamp("2000-01-01", tz="UTC")
    assert df["event_id"].tolist() == ["seq-1-1", "seq-1-2", "seq-1-3", "seq-3-1", "seq-3-2"]
    report = df.attrs["load_report"]
    assert report["format"] == "sequences" and report["rows_read"] == 2


def test_sequences_are_detected_by_the_generic_loader(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c\nu2 d e\n")
    assert looks_like_sequences(path)
    df = load_interactions(path)
    assert df.attrs["load_report"]["format"] == "sequences" and len(df) == 5
    table = tmp_path / "table.csv"
    table.write_text("user,item,time\na,1,1700000000\n")
    assert not looks_like_sequences(table)
    # naming a column means a table; format= says it outright
    with pytest.raises(LoadError, match="no ts column found"):
        load_interactions(path, item_col="u1 a b c")
    assert len(load_interactions(path, format="sequences")) == 5


def test_sequences_invalid_lines_raise_or_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b\nlonely\nu2 c d/e\nu3 f g\n")
    with pytest.raises(LoadError, match=r"2 of 4 line\(s\) are invalid.*--on-invalid drop"):
        load_sequences(path)
    df = load_sequences(path, on_invalid="drop")
    assert df["user_id"].unique().tolist() == ["u1", "u3"]
    assert sum(df.attrs["load_report"]["dropped"].values()) == 2


@needs_data
def test_amazon_sequences_counts_match_the_readme() -> None:
    df = load_sequences(DATA / AMAZON_SEQUENCES["amazon-toys"])
    assert len(df) == 167_597
    assert df["user_id"].nunique() == 19_412 and df["item_id"].nunique() == 11_924


# -- the command line -----------------------------------------------------------------------
def _lambdarec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambdarec.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_cli_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args, says in (
        (["--source", "bogus"], "Invalid value for '--source'"),
        (["--source", "generic"], "--path is required for --source generic"),
        (["--source", "generic", "--path", "x.csv", "--on-invalid", "maybe"], "'maybe'"),
    ):
        done = _lambdarec("data", "load", *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
        assert says in done.stderr


def test_cli_drop_that_keeps_no_row_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,yesterday\n")
    args = ["--source", "generic", "--path", str(path), "--on-invalid", "drop"]
    done = _lambdarec("data", "load", *args, "--out", str(tmp_path / "out.parquet"), cwd=tmp_path)
    assert done.returncode == 1
    said = [line for line in done.stderr.splitlines() if not re.match(r"[\d:]+ [A-Z]+ ", line)]
    assert said == [said[0]] and said[0].startswith("error: ") and "nothing to load" in said[0]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_cli_loads_a_sequences_file(tmp_path: Path) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c\nu2 d e\n")
    out = tmp_path / "events.parquet"
    done = _lambdarec(
        "data", "load", "--source", "generic", "--path", str(path), "--out", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "loaded 5 events" in done.stdout and "2 sessions" in done.stdout
    assert len(pd.read_parquet(out)) == 5


def test_generic_timestamps_follow_the_contracts_range(tmp_path: Path) -> None:
    """One rule with the API and the speed layer: 2000-01-01 <= ts <= now + 5 min."""
    path = tmp_path / "range.csv"
    path.write_text(
        "user,item,time\n"
        "a,1,2024-05-01T12:00:00Z\n"
        "a,2,1999-12-31T23:59:59Z\n"  # before 2000
        "a,3,2999-01-01T00:00:00Z\n"  # the far future
    )
    with pytest.raises(LoadError, match=r"outside \[2000-01-01, now \+ 0:05:00\].*row 2"):
        load_interactions(path)
    kept = load_interactions(path, on_invalid="drop")
    assert kept["item_id"].tolist() == ["1"]
    assert kept.attrs["load_report"]["dropped"]


def test_generic_mixed_epoch_units_are_refused_with_the_rows_named(tmp_path: Path) -> None:
    """Seconds among milliseconds used to be read as 1970 (and 1e20 as whatever the median
    said): the file is refused, naming the odd rows and the option that reads one unit."""
    path = tmp_path / "mixed.csv"
    ms = [1_700_000_000_000 + n * 1000 for n in range(8)]
    path.write_text(
        "user,item,time\n"
        + "".join(f"u,{n},{t}\n" for n, t in enumerate(ms))
        + "u,8,1700000009\n"  # seconds, row 9
        + "u,9,100000000000000000000\n"  # 1e20, row 10
    )
    with pytest.raises(
        LoadError,
        match=r"mix units: 2 value\(s\) read as epoch s/ns among epoch ms.*row 9.*row 10.*--ts-unit",
    ):
        load_interactions(path)
    one_unit = load_interactions(path, ts_unit="ms", on_invalid="drop")
    assert len(one_unit) == 8  # the two odd rows fall outside the range in ms: dropped, counted
