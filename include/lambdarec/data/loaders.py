"""Turn real datasets into the canonical event table (or, for SR-GNN, into its session split).

Every loader returns a pandas DataFrame with exactly :data:`lambdarec.events.CANONICAL_COLUMNS`
(see :mod:`lambdarec.data.canonical` for the dtypes), sorted by ``ts`` and then by the row's
position in the source file, so two loads of the same file are identical.

Rows are never dropped silently: each loader logs what it dropped and why at WARNING, what it
mapped at INFO, and leaves a :class:`LoadReport` (as a dict) in ``df.attrs["load_report"]``.

Mapping choices:

* **Taobao** ``pv`` -> ``view``, ``cart`` -> ``add_to_cart``, ``buy`` -> ``purchase``. A ``fav``
  (favourite) is neither a cart nor a purchase, and the canonical table has no context column to
  keep the nuance; the shopper did look at the item, so by default a ``fav`` becomes a ``view``
  (``fav="drop"`` drops them instead, counted). Models that need favourites read the raw file.
  Taobao has no session id: a session ends after more than ``session_gap`` (30 min) without an
  event from that user; ``session_id`` is ``"<user>-<n>"``. ``event_id`` is ``"tb-<line>"``
  (1-based line in the file); ``category`` is the category id; there is no price.
* **Diginetica raw** rows are all views; a missing user becomes ``"anon-<session>"``; the event
  time is ``eventdate`` (UTC midnight) plus ``timeframe`` ms; ``event_id`` is ``"dg-<row>"``.
* **Sequences** (one user per line, ``user item item ...``, items in time order, no timestamps:
  the Amazon 5-core files): every item is a ``view``; the session is the user; timestamps are
  synthetic, one second apart in file order from :data:`SEQUENCES_EPOCH_MS`, so they keep the
  order and nothing else (``df.attrs["load_report"]["format"] == "sequences"`` says so);
  ``event_id`` is ``"<source>-<line>-<position>"``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from lambdarec.config import get_settings
from lambdarec.data.canonical import sort_canonical
from lambdarec.events import (
    ID_PATTERN,
    ID_REGEX,
    MAX_CATEGORY_LEN,
    MAX_FUTURE_SKEW,
    MAX_ID_LEN,
    MIN_TS,
    MIN_TS_MS,
    EventType,
    canonical_arrow_schema,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

SESSION_GAP = timedelta(minutes=30)

TAOBAO_FILE = Path("taobao_userbehavior") / "UserBehavior_first815users.csv"
DIGINETICA_RAW_FILE = Path("diginetica_cikm16") / "raw_sample" / "sample_train-item-views.csv"
SRGNN_DIR = Path("diginetica_cikm16") / "srgnn_protocol_full"
#: The Amazon 5-core sequences (ICLRec's preprocessing) by dataset name.
AMAZON_SEQUENCES: dict[str, Path] = {
    "amazon-sports": Path("amazon_5core_sequences") / "Sports_and_Outdoors.txt",
    "amazon-toys": Path("amazon_5core_sequences") / "Toys_and_Games.txt",
}
#: Where a sequences file's synthetic timestamps start (2000-01-01T00:00:00Z).
SEQUENCES_EPOCH_MS = 946_684_800_000

#: The official Taobao window, [2017-11-25, 2017-12-04) in UTC+8, as epoch seconds.
TAOBAO_WINDOW = (1_511_539_200, 1_512_316_800)
TAOBAO_BEHAVIOR = {"pv": EventType.VIEW, "cart": EventType.ADD_TO_CART, "buy": EventType.PURCHASE}

#: Event type spellings understood by :func:`load_interactions` (lower case, without extra map).
DEFAULT_EVENT_TYPE_MAP: dict[str, str] = {
    **{k: EventType.VIEW.value for k in ("view", "pv", "click", "detail", "page_view", "pageview")},
    **{k: EventType.ADD_TO_CART.value for k in ("add_to_cart", "addtocart", "cart", "add")},
    **{
        k: EventType.REMOVE_FROM_CART.value
        for k in ("remove_from_cart", "removefromcart", "remove")
    },
    **{
        k: EventType.PURCHASE.value for k in ("purchase", "buy", "transaction", "order", "checkout")
    },
}

#: Column names tried, in order, when a column is not named explicitly (compared lower case,
#: without ``_``, ``-`` and spaces).
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "user", "visitor_id", "customer_id", "client_id", "uid"),
    "session": ("session_id", "session", "sid"),
    "item": ("item_id", "item", "product_id", "product", "sku", "article_id", "iid"),
    "ts": ("timestamp", "ts", "event_time", "time", "datetime", "event_timestamp", "date_time"),
    "event_type": (
        "event_type",
        "event",
        "behavior_type",
        "behaviour_type",
        "behavior",
        "action",
        "interaction",
        "type",
    ),
    "category": ("category", "category_id", "category_code", "cat"),
    "price": ("price", "unit_price"),
    "event_id": ("event_id",),
}

OnInvalid = Literal["raise", "drop"]
FileFormat = Literal["auto", "table", "sequences"]


class LoadError(ValueError):
    """The input cannot become a canonical event table; the message says why and what to do."""


@dataclass
class LoadReport:
    """What a loader read, dropped (by reason) and mapped; logged and kept in ``df.attrs``."""

    source: str
    path: str
    #: "events" (a row per event) or "sequences" (a line per user, no timestamps)
    format: str = "events"
    rows_read: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    mapped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int, examples: Sequence[object] = ()) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)
            shown = f"; e.g. {list(examples)[:3]}" if len(examples) else ""
            log.warning("%s: dropped %d row(s): %s%s", self.source, count, reason, shown)

    def finish(self, df: pd.DataFrame) -> pd.DataFrame:
        self.rows_out = len(df)
        log.info(
            "%s: read %d row(s) from %s, kept %d, dropped %s, mapped %s",
            self.source,
            self.rows_read,
            self.path,
            self.rows_out,
            self.dropped or "none",
            self.mapped or "nothing",
        )
        df.attrs["load_report"] = asdict(self)
        return df


# -- shared helpers -------------------------------------------------------------------------
def shared_path(relative: Path) -> Path:
    """A file of the shared datasets (``settings.shared_data_dir``)."""
    return get_settings().shared_data_dir / relative


def content_ids(
    source: str, who: np.ndarray, item: np.ndarray, event_type: np.ndarray, ts_ms: np.ndarray
) -> np.ndarray:
    """Event ids from what each event is: ``"<source>-<16 hex of its hash>"`` over (user or
    session, item, event type, time in ms), ``"-<n>"`` added to the n-th repeat of the same
    event in the file. Loading the same file again gives the same ids (a lake merge then changes
    nothing); events of two files never share an id unless they are the same event."""
    import hashlib

    out = np.empty(len(ts_ms), dtype=object)
    seen: dict[str, int] = {}
    for n, key in enumerate(zip(who, item, event_type, ts_ms, strict=True)):
        digest = hashlib.blake2b("\x1f".join(map(str, key)).encode(), digest_size=8).hexdigest()
        repeat = seen.get(digest, 0)
        seen[digest] = repeat + 1
        out[n] = f"{source}-{digest}" + (f"-{repeat}" if repeat else "")
    return out


def _canonical(
    *,
    event_id: Sequence | np.ndarray,
    user_id: Sequence | np.ndarray,
    session_id: Sequence | np.ndarray,
    item_id: Sequence | np.ndarray,
    event_type: Sequence | np.ndarray,
    category: Sequence | np.ndarray | None,
    price: Sequence | np.ndarray | None,
    ts_ms: np.ndarray,
    tiebreak: np.ndarray,
) -> pd.DataFrame:
    """Build the canonical frame through Arrow (so dtypes match every other producer), sorted."""
    n = len(ts_ms)
    columns = {
        "event_id": event_id,
        "user_id": user_id,
        "session_id": session_id,
        "item_id": item_id,
        "event_type": event_type,
        "category": category if category is not None else pa.nulls(n, pa.string()),
        "price": price if price is not None else pa.nulls(n, pa.float64()),
        "ts": ts_ms,
    }
    schema = canonical_arrow_schema()
    arrays = [pa.array(columns[f.name], f.type, from_pandas=True) for f in schema]
    df = pa.Table.from_arrays(arrays, schema=schema).to_pandas()
    return sort_canonical(df, tiebreak)


def sessionize(
    user_id: pd.Series | np.ndarray, ts_ms: np.ndarray, gap: timedelta = SESSION_GAP
) -> np.ndarray:
    """Session ids ``"<user>-<n>"``: a user's session ends after more than ``gap`` of silence.

    ``n`` counts the user's sessions from 0 in time order; ties keep input order.
    """
    users = np.asarray(user_id, dtype=object)
    n = len(users)
    codes, _ = pd.factorize(users)
    order = np.lexsort((np.arange(n), ts_ms, codes))
    c, t = codes[order], np.asarray(ts_ms)[order]
    user_start = np.ones(n, dtype=bool)
    user_start[1:] = c[1:] != c[:-1]
    new_session = user_start.copy()
    new_session[1:] |= (t[1:] - t[:-1]) > gap / timedelta(milliseconds=1)
    seq = np.cumsum(new_session) - 1
    starts = np.flatnonzero(user_start)
    ordinal = seq - np.repeat(seq[starts], np.diff(np.r_[starts, n]))
    out = np.empty(n, dtype=object)
    out[order] = (
        pd.Series(users[order]).astype(str).str.cat(ordinal.astype(str), sep="-").to_numpy()
    )
    return out


# -- Taobao ---------------------------------------------------------------------------------
def load_taobao(
    path: str | Path | None = None,
    *,
    official_window: bool = False,
    session_gap: timedelta = SESSION_GAP,
    fav: Literal["view", "drop"] = "view",
) -> pd.DataFrame:
    """Taobao UserBehavior (headerless CSV) as canonical events; see the module doc for mapping.

    ``official_window`` keeps only [2017-11-25, 2017-12-04) UTC+8, the usual preprocessing (35 rows
    of the 815-user file fall outside it). The truncated last line of the shared file is dropped
    and reported.
    """
    path = Path(path) if path is not None else shared_path(TAOBAO_FILE)
    report = LoadReport(source="taobao", path=str(path))
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    raw = pd.read_csv(
        path, header=None, names=names, dtype=str, keep_default_na=False, na_values=[""]
    )
    report.rows_read = len(raw)
    line = np.arange(1, len(raw) + 1)

    incomplete = raw.isna().any(axis=1).to_numpy()
    ts = pd.to_numeric(raw["timestamp"], errors="coerce")
    bad_ts = ~incomplete & ts.isna().to_numpy()
    report.drop(
        "incomplete line (truncated: a field is missing)",
        int(incomplete.sum()),
        [
            f"line {i}: {','.join(map(str, r))}"
            for i, r in zip(line[incomplete], raw[incomplete].fillna("").to_numpy(), strict=True)
        ],
    )
    report.drop("unparseable timestamp", int(bad_ts.sum()), list(line[bad_ts]))
    keep = ~(incomplete | bad_ts)

    behavior = raw["behavior_type"].str.strip().str.lower()
    known = behavior.isin([*TAOBAO_BEHAVIOR, "fav"]).to_numpy()
    if (keep & ~known).any():
        unknown = behavior[keep & ~known]
        raise LoadError(
            f"taobao: {len(unknown)} row(s) have an unknown behavior_type, e.g. "
            f"{sorted(unknown.unique())[:5]}; expected pv, cart, fav or buy"
        )
    is_fav = (behavior == "fav").to_numpy()
    if fav == "drop":
        report.drop("fav (fav='drop')", int((keep & is_fav).sum()))
        keep &= ~is_fav
    else:
        report.mapped["fav->view"] = int((keep & is_fav).sum())

    seconds = ts.to_numpy(dtype="float64", na_value=np.nan)
    if official_window:
        lo, hi = TAOBAO_WINDOW
        outside = keep & ~((seconds >= lo) & (seconds < hi))
        report.drop(
            "outside the official window [2017-11-25, 2017-12-04) UTC+8",
            int(outside.sum()),
            [f"line {i}" for i in line[outside]],
        )
        keep &= ~outside

    df = raw[keep]
    ts_ms = seconds[keep].astype(np.int64) * 1000
    mapping = {**{k: v.value for k, v in TAOBAO_BEHAVIOR.items()}, "fav": EventType.VIEW.value}
    users = df["user_id"].str.strip().to_numpy()
    out = _canonical(
        event_id=[f"tb-{i}" for i in line[keep]],
        user_id=users,
        session_id=sessionize(users, ts_ms, session_gap),
        item_id=df["item_id"].str.strip().to_numpy(),
        event_type=behavior[keep].map(mapping).to_numpy(),
        category=df["category_id"].str.strip().to_numpy(),
        price=None,
        ts_ms=ts_ms,
        tiebreak=line[keep],
    )
    return report.finish(out)


# -- Diginetica -----------------------------------------------------------------------------
def load_diginetica_raw(path: str | Path | None = None) -> pd.DataFrame:
    """The Diginetica raw sample (``;``-separated, CIKM Cup schema) as canonical view events."""
    path = Path(path) if path is not None else shared_path(DIGINETICA_RAW_FILE)
    report = LoadReport(source="diginetica", path=str(path))
    raw = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False, na_values=["NA", ""])
    expected = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
    missing = [c for c in expected if c not in raw.columns]
    if missing:
        raise LoadError(
            f"diginetica: {path} lacks column(s) {missing}; found {list(raw.columns)} "
            "(is it the ';'-separated CIKM Cup train-item-views file?)"
        )
    report.rows_read = len(raw)
    row = np.arange(1, len(raw) + 1)
    day = pd.to_datetime(raw["eventdate"], format="%Y-%m-%d", errors="coerce", utc=True)
    frame = pd.to_numeric(raw["timeframe"], errors="coerce")
    bad = (day.isna() | frame.isna() | raw["session_id"].isna() | raw["item_id"].isna()).to_numpy()
    report.drop(
        "missing session/item or unparseable eventdate/timeframe", int(bad.sum()), list(row[bad])
    )
    keep = ~bad
    df = raw[keep]
    day_ms = day[keep].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    ts_ms = day_ms + frame[keep].to_numpy(dtype=np.int64)
    session = df["session_id"].str.strip()
    user = df["user_id"].str.strip()
    anon = user.isna()
    report.mapped["missing user->anon-<session>"] = int(anon.sum())
    out = _canonical(
        event_id=[f"dg-{i}" for i in row[keep]],
        user_id=user.where(~anon, "anon-" + session).to_numpy(),
        session_id=session.to_numpy(),
        item_id=df["item_id"].str.strip().to_numpy(),
        event_type=np.full(len(df), EventType.VIEW.value, dtype=object),
        category=None,
        price=None,
        ts_ms=ts_ms,
        tiebreak=row[keep],
    )
    return report.finish(out)


@dataclass(frozen=True)
class SrgnnSplit:
    """Diginetica under the SR-GNN protocol: item ids 1..n_items, no timestamps, no users.

    ``train_sessions`` are click sequences; ``test`` holds (prefix, target) pairs, longest prefix
    of each test session first, exactly as published.
    """

    train_sessions: list[list[int]]
    test: list[tuple[list[int], int]]

    @property
    def n_items(self) -> int:
        return max(max(s) for s in self.train_sessions)

    @property
    def n_train_clicks(self) -> int:
        return sum(len(s) for s in self.train_sessions)


def _int_tokens(text: str, where: str) -> list[int]:
    try:
        return [int(tok) for tok in text.split()]
    except ValueError:
        raise LoadError(f"{where}: expected space-separated item ids, got {text[:80]!r}") from None


def load_srgnn(directory: str | Path | None = None) -> SrgnnSplit:
    """Read ``train_sessions_part{1,2}.txt`` (concatenated) and ``test_prefix_target.tsv``."""
    directory = Path(directory) if directory is not None else shared_path(SRGNN_DIR)
    train: list[list[int]] = []
    for part in ("train_sessions_part1.txt", "train_sessions_part2.txt"):
        with (directory / part).open(encoding="utf-8") as fh:
            for n, text in enumerate(fh, start=1):
                if text.strip():
                    train.append(_int_tokens(text, f"{part} line {n}"))
    test: list[tuple[list[int], int]] = []
    with (directory / "test_prefix_target.tsv").open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["prefix_items", "target_item"]:
            raise LoadError(f"test_prefix_target.tsv: unexpected header {header}")
        for n, text in enumerate(fh, start=2):
            if not text.strip():
                continue
            prefix, sep, target = text.rstrip("\n").partition("\t")
            if not sep:
                raise LoadError(
                    f"test_prefix_target.tsv line {n}: no tab between prefix and target"
                )
            where = f"test_prefix_target.tsv line {n}"
            test.append((_int_tokens(prefix, where), _int_tokens(target, where)[0]))
    log.info("srgnn: %d train sessions, %d test pairs from %s", len(train), len(test), directory)
    return SrgnnSplit(train_sessions=train, test=test)


def expand_sessions(sessions: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """SR-GNN augmentation: each session ``[i1..in]`` gives ``([i1..ik], i(k+1))``, k = 1..n-1.

    Within a session the longest prefix comes first, like the published test file.
    """
    pairs: list[tuple[list[int], int]] = []
    for s in sessions:
        seq = list(s)
        pairs.extend((seq[:k], seq[k]) for k in range(len(seq) - 1, 0, -1))
    return pairs


# -- sequences ------------------------------------------------------------------------------
_TABLE_SEPARATORS = (",", ";", "\t", "|")


def looks_like_sequences(path: str | Path, lines: int = 20) -> bool:
    """A text file whose first ``lines`` non-empty lines each hold two or more space-separated
    tokens and none of a table's separators (``,`` ``;`` tab ``|``)."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return False
    seen = 0
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for text in fh:
            if not text.strip():
                continue
            if any(sep in text for sep in _TABLE_SEPARATORS) or len(text.split()) < 2:
                return False
            seen += 1
            if seen >= lines:
                break
    return seen > 0


def load_sequences(
    path: str | Path, *, on_invalid: OnInvalid = "raise", source: str = "seq"
) -> pd.DataFrame:
    """A file of one user per line (``user item item ...``, whitespace-separated, items in time
    order) as canonical view events, in the file's order (see the module doc).

    A line whose user or an item breaks the id rule, or without any item, is invalid: it raises
    :class:`LoadError`, or with ``on_invalid="drop"`` the line is dropped and counted.
    """
    path = Path(path)
    if on_invalid not in ("raise", "drop"):
        raise ValueError("on_invalid must be 'raise' or 'drop'")
    if not path.exists():
        raise LoadError(f"{path} does not exist")
    report = LoadReport(source=source, path=str(path), format="sequences")
    users: list[str] = []
    items: list[str] = []
    event_ids: list[str] = []
    bad: dict[str, list[int]] = {}
    seen_users: set[str] = set()
    repeated: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, text in enumerate(fh, start=1):
            tokens = text.split()
            if not tokens:
                continue
            report.rows_read += 1
            if len(tokens) < 2:
                bad.setdefault("a user without items", []).append(n)
                continue
            if not all(len(t) <= MAX_ID_LEN and ID_PATTERN.match(t) for t in tokens):
                bad.setdefault(f"an id breaks the id rule {ID_REGEX}", []).append(n)
                continue
            user = tokens[0]
            if user in seen_users:
                repeated.append(user)
            seen_users.add(user)
            users.extend([user] * (len(tokens) - 1))
            items.extend(tokens[1:])
            event_ids.extend(f"{source}-{n}-{j}" for j in range(1, len(tokens)))
    if bad and on_invalid == "raise":
        summary = "; ".join(f"{reason}: line(s) {lines[:3]}" for reason, lines in bad.items())
        raise LoadError(
            f"{path}: {sum(map(len, bad.values()))} of {report.rows_read} line(s) are invalid "
            f"({summary}); fix the file, or drop them (on_invalid='drop', --on-invalid drop)"
        )
    for reason, lines in bad.items():
        report.drop(reason, len(lines), [f"line {i}" for i in lines])
    if not items:
        raise LoadError(f"{path}: no line with a user and items (read {report.rows_read} line(s))")
    if repeated:
        log.warning(
            "%s: %d user(s) have more than one line, e.g. %s; their lines are one sequence",
            source,
            len(set(repeated)),
            sorted(set(repeated))[:3],
        )
    n_events = len(items)
    user_arr = np.asarray(users, dtype=object)
    report.mapped["sequence item->view"] = n_events
    out = _canonical(
        event_id=event_ids,
        user_id=user_arr,
        session_id=user_arr,
        item_id=np.asarray(items, dtype=object),
        event_type=np.full(n_events, EventType.VIEW.value, dtype=object),
        category=None,
        price=None,
        ts_ms=SEQUENCES_EPOCH_MS + 1000 * np.arange(n_events, dtype=np.int64),
        tiebreak=np.arange(n_events),
    )
    return report.finish(out)


# -- generic interactions -------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _resolve(columns: Sequence[str], role: str, explicit: str | None, required: bool) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise LoadError(
                f"{role} column {explicit!r} is not in the file; available columns: {list(columns)}"
            )
        return explicit
    by_norm = {_norm(c): c for c in columns}
    for cand in COLUMN_CANDIDATES[role]:
        if _norm(cand) in by_norm:
            return by_norm[_norm(cand)]
    if required:
        tried = ", ".join(COLUMN_CANDIDATES[role])
        raise LoadError(
            f"no {role} column found (tried {tried}); pass {role}_col=... "
            f"(--{role.replace('_', '-')}-col); available columns: {list(columns)}"
        )
    return None


def _empty(values: pd.Series) -> bool:
    """No value at all: missing everywhere, or blank strings."""
    return bool(values.isna().all() or (values.astype("string").str.strip().fillna("") == "").all())


def _id_strings(values: pd.Series) -> pd.Series:
    """Ids as stripped strings; integral floats (ints read with NaN) lose their ``.0``."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if (finite == np.floor(finite)).all():
            values = values.astype("Int64")
    out = values.astype("string").str.strip()
    return out.mask(out == "")


def _latest_ms() -> int:
    """The latest event time accepted now (the contract's clock-skew allowance)."""
    return int((datetime.now(UTC) + MAX_FUTURE_SKEW).timestamp() * 1000)


#: Epoch units by the magnitude of a timestamp of this century (below each bound).
_UNIT_BOUNDS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", np.inf))


def _unit_of(magnitude: np.ndarray) -> np.ndarray:
    """The epoch unit each magnitude reads as (index into :data:`_UNIT_BOUNDS`)."""
    return np.searchsorted(np.array([b for _, b in _UNIT_BOUNDS[:-1]]), magnitude, side="right")


def _parse_ts(values: pd.Series, unit: str) -> pd.Series:
    """Epoch ms (Int64, <NA> where unparseable) from epoch numbers or ISO-8601 strings."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is None:
            log.info("timestamps have no time zone; taking them as UTC")
            values = values.dt.tz_localize("UTC")
        return (
            values.dt.tz_convert("UTC")
            .astype("datetime64[ms, UTC]")
            .astype("int64")
            .astype("Int64")
            .mask(values.isna())
        )
    numeric = pd.to_numeric(values, errors="coerce")
    present = values.notna() & (values.astype("string").str.strip() != "")
    if unit != "auto" or (numeric.notna().sum() > 0.5 * max(int(present.sum()), 1)):
        if unit == "auto":
            magnitude = numeric.abs()
            known = magnitude.notna() & (magnitude > 0)
            units = pd.Series(
                _unit_of(magnitude[known].to_numpy(dtype="float64")), index=magnitude[known].index
            )
            counts = units.value_counts()
            if len(counts) > 1:
                main = int(counts.index[0])
                odd = units[units != main]
                rows = ", ".join(f"row {int(r) + 1}: {values[r]!r}" for r in odd.index[:3])
                raise LoadError(
                    f"timestamps mix units: {len(odd)} value(s) read as epoch "
                    f"{'/'.join(_UNIT_BOUNDS[int(u)][0] for u in sorted(set(odd)))} among epoch "
                    f"{_UNIT_BOUNDS[main][0]} ({rows}); fix those rows, or pass --ts-unit to "
                    "read every value in one unit"
                )
            unit = _UNIT_BOUNDS[int(counts.index[0])][0] if len(counts) else "ms"
            log.info("numeric timestamps look like epoch %s", unit)
        factor = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}[unit]
        ms = np.floor(numeric.to_numpy(dtype="float64", na_value=np.nan) * factor)
        ms[~np.isfinite(ms)] = np.nan
        ms = np.clip(ms, -9e18, 9e18)  # beyond int64: out of any range, flagged as such
        return pd.Series(ms, index=values.index).astype("Int64")
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    return parsed.astype("datetime64[ms, UTC]").astype("int64").astype("Int64").mask(parsed.isna())


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if sep is None:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        sep = max([",", ";", "\t", "|"], key=first.count)
    return pd.read_csv(
        path, sep=sep, dtype=str, keep_default_na=False, na_values=["", "NA", "null", "NULL"]
    )


def load_interactions(
    path: str | Path,
    *,
    user_col: str | None = None,
    session_col: str | None = None,
    item_col: str | None = None,
    ts_col: str | None = None,
    event_type_col: str | None = None,
    category_col: str | None = None,
    price_col: str | None = None,
    event_id_col: str | None = None,
    event_type_map: Mapping[str, str] | None = None,
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto",
    on_invalid: OnInvalid = "raise",
    session_gap: timedelta = SESSION_GAP,
    sep: str | None = None,
    source: str = "gen",
    format: FileFormat = "auto",
) -> pd.DataFrame:
    """A CSV or Parquet interactions file, or a sequences file, as canonical events.

    ``format="sequences"`` (or ``"auto"`` when no column is named and
    :func:`looks_like_sequences`) reads one user per line with :func:`load_sequences`; the rest
    of this doc is about tables.

    Required: an item column, a timestamp column and a user or a session column (names are
    detected from :data:`COLUMN_CANDIDATES` unless given). Timestamps may be epoch s/ms/us/ns
    (unit detected from the magnitude unless ``ts_unit`` says) or ISO-8601 strings (no zone means
    UTC). Without an event type column every row is a ``view``; event types are matched case-
    insensitively through :data:`DEFAULT_EVENT_TYPE_MAP` updated with ``event_type_map``.
    Without a session column, sessions are cut at ``session_gap``; without a user column, the user
    is ``"anon-<session>"``. Without an event id column, ``event_id`` is derived from the event
    itself (:func:`content_ids`), so reloading a file is idempotent and two files never collide.
    An optional column that is present but has no value at all counts as absent.

    Invalid rows (missing or malformed id, unparseable timestamp, unknown event type, bad price)
    raise :class:`LoadError` with counts and examples, or with ``on_invalid="drop"`` are dropped
    and counted in the log and the report; a file with no valid row raises either way.
    """
    path = Path(path)
    if on_invalid not in ("raise", "drop"):
        raise ValueError("on_invalid must be 'raise' or 'drop'")
    if format not in ("auto", "table", "sequences"):
        raise ValueError("format must be 'auto', 'table' or 'sequences'")
    if not path.exists():
        raise LoadError(f"{path} does not exist")
    named = (user_col, session_col, item_col, ts_col, event_type_col, category_col, price_col)
    if format == "sequences" or (
        format == "auto" and all(c is None for c in named) and looks_like_sequences(path)
    ):
        log.info("%s: %s holds one user per line: reading it as sequences", source, path)
        return load_sequences(path, on_invalid=on_invalid, source=source)
    raw = _read_table(path, sep)
    report = LoadReport(source=source, path=str(path), rows_read=len(raw))
    if raw.empty:
        raise LoadError(f"{path}: no rows (columns {list(raw.columns)})")
    cols = list(raw.columns)
    item_c = _resolve(cols, "item", item_col, required=True)
    ts_c = _resolve(cols, "ts", ts_col, required=True)

    def optional(role: str, explicit: str | None) -> str | None:
        col = _resolve(cols, role, explicit, required=False)
        if col is not None and _empty(raw[col]):
            log.info("%s: column %r has no value: taken as absent", source, col)
            report.mapped[f"empty {role} column {col!r}->absent"] = len(raw)
            return None
        return col

    user_c = optional("user", user_col)
    session_c = optional("session", session_col)
    if user_c is None and session_c is None:
        raise LoadError(
            f"no user or session column found (tried {', '.join(COLUMN_CANDIDATES['user'])} and "
            f"{', '.join(COLUMN_CANDIDATES['session'])}, or those present have no value); pass "
            f"user_col=... or session_col=... (--user-col, --session-col); available columns: "
            f"{cols}"
        )
    type_c = optional("event_type", event_type_col)
    cat_c = optional("category", category_col)
    price_c = optional("price", price_col)
    id_c = optional("event_id", event_id_col)
    log.info(
        "%s: columns item=%s ts=%s user=%s session=%s event_type=%s category=%s price=%s event_id=%s",
        source,
        item_c,
        ts_c,
        user_c,
        session_c,
        type_c,
        cat_c,
        price_c,
        id_c,
    )

    row = np.arange(1, len(raw) + 1)
    problems: dict[str, np.ndarray] = {}
    examples: dict[str, list[object]] = {}

    def flag(reason: str, mask: pd.Series | np.ndarray, shown: pd.Series) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            problems[reason] = mask
            examples[reason] = [
                f"row {r}: {v!r}" for r, v in zip(row[mask][:3], shown[mask][:3], strict=True)
            ]

    ids: dict[str, pd.Series] = {}
    for role, col in (
        ("item", item_c),
        ("user", user_c),
        ("session", session_c),
        ("event_id", id_c),
    ):
        if col is None:
            continue
        values = _id_strings(raw[col])
        flag(f"missing {role} ({col})", values.isna(), raw[col])
        bad = values.notna() & ~(
            values.str.fullmatch(ID_REGEX).fillna(False) & (values.str.len() <= MAX_ID_LEN)
        )
        flag(
            f"{role} ({col}) breaks the id rule {ID_REGEX} (max {MAX_ID_LEN} chars)",
            bad,
            raw[col],
        )
        ids[role] = values

    ts_ms = _parse_ts(raw[ts_c], ts_unit)
    flag(f"unparseable or missing timestamp ({ts_c})", ts_ms.isna(), raw[ts_c])
    flag(
        f"timestamp ({ts_c}) outside [{MIN_TS.date()}, now + {MAX_FUTURE_SKEW}]",
        ts_ms.notna() & ~ts_ms.between(MIN_TS_MS, _latest_ms()).fillna(True),
        raw[ts_c],
    )

    if type_c is not None:
        mapping = dict(DEFAULT_EVENT_TYPE_MAP)
        for key, value in (event_type_map or {}).items():
            if value not in {e.value for e in EventType}:
                raise LoadError(
                    f"event_type_map[{key!r}] = {value!r} is not an event type; "
                    f"use one of {[e.value for e in EventType]}"
                )
            mapping[str(key).strip().lower()] = value
        given = raw[type_c].astype("string").str.strip().str.lower()
        event_type = given.map(mapping)
        unknown = event_type.isna()
        if unknown.any():
            counts = given[unknown].fillna("<missing>").value_counts()
            examples_t = ", ".join(f"{k!r} x{v}" for k, v in counts.head(5).items())
            reason = f"unknown event type ({type_c}): {examples_t}; map them with event_type_map"
            flag(reason, unknown, raw[type_c])
    else:
        event_type = pd.Series(EventType.VIEW.value, index=raw.index)
        report.mapped["no event type column->view"] = len(raw)

    category = None
    if cat_c is not None:
        category = _id_strings(raw[cat_c])
        flag(
            f"category ({cat_c}) longer than {MAX_CATEGORY_LEN} chars",
            category.str.len().fillna(0) > MAX_CATEGORY_LEN,
            raw[cat_c],
        )
    price = None
    if price_c is not None:
        price = pd.to_numeric(raw[price_c], errors="coerce").astype("float64")
        given_price = raw[price_c].notna() & (raw[price_c].astype("string").str.strip() != "")
        bad_price = (given_price & price.isna()) | (price < 0) | ~np.isfinite(price.fillna(0))
        flag(f"price ({price_c}) not a finite number >= 0", bad_price, raw[price_c])

    invalid = np.zeros(len(raw), dtype=bool)
    for mask in problems.values():
        invalid |= mask
    if invalid.any():
        reasons = "; ".join(
            f"{reason}: {int(m.sum())} row(s), {examples[reason]}" for reason, m in problems.items()
        )
        if invalid.all():
            raise LoadError(
                f"{path}: all {len(raw)} row(s) are invalid, nothing to load ({reasons}); check "
                "the column options (item, ts, user, session, event type) and the id rule"
            )
        if on_invalid == "raise":
            raise LoadError(
                f"{path}: {int(invalid.sum())} of {len(raw)} row(s) are invalid ({reasons}); fix "
                "the file, or drop them (on_invalid='drop', --on-invalid drop; they are counted)"
            )
        for reason, mask in problems.items():
            report.drop(reason, int(mask.sum()), examples[reason])
        if len(problems) > 1:
            log.warning("%s: %d distinct row(s) dropped in total", source, int(invalid.sum()))
    keep = ~invalid
    if type_c is not None:
        pairs = pd.DataFrame({"s": given[keep], "d": event_type[keep]}).value_counts(sort=False)
        for (src, dst), count in pairs.items():
            report.mapped[f"{src}->{dst}"] = int(count)

    ts_kept = ts_ms[keep].to_numpy(dtype=np.int64)
    if session_c is not None:
        session = ids["session"][keep].to_numpy(dtype=object)
    else:
        session = sessionize(ids["user"][keep].to_numpy(dtype=object), ts_kept, session_gap)
    if user_c is not None:
        user = ids["user"][keep].to_numpy(dtype=object)
    else:
        user = np.array(["anon-" + s for s in session], dtype=object)
        report.mapped["no user column->anon-<session>"] = int(keep.sum())
    if id_c is not None:
        event_id = ids["event_id"][keep]
        dupes = event_id[event_id.duplicated(keep=False)]
        if len(dupes):
            raise LoadError(
                f"event id column {id_c!r} has {dupes.nunique()} duplicated value(s), e.g. "
                f"{list(dupes.unique()[:3])}; event ids must be unique"
            )
        event_id_arr = event_id.to_numpy(dtype=object)
    else:
        who = ids["user"] if user_c is not None else ids["session"]
        event_id_arr = content_ids(
            source,
            who[keep].to_numpy(dtype=object),
            ids["item"][keep].to_numpy(dtype=object),
            event_type[keep].to_numpy(dtype=object),
            ts_kept,
        )

    out = _canonical(
        event_id=event_id_arr,
        user_id=user,
        session_id=session,
        item_id=ids["item"][keep].to_numpy(dtype=object),
        event_type=event_type[keep].to_numpy(dtype=object),
        category=None if category is None else category[keep].to_numpy(dtype=object, na_value=None),
        price=None if price is None else price[keep].to_numpy(dtype="float64", na_value=np.nan),
        ts_ms=ts_kept,
        tiebreak=row[keep],
    )
    return report.finish(out)
