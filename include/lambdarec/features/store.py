"""The feature store for the current settings: render, apply, materialize, read and push.

``feature_repo/`` holds the definitions; this module renders ``feature_store.yaml`` into
``<state_dir>/feast/`` (registry and SQLite online store beside it, absolute paths), loads the
definitions for the settings' lake and drives Feast from Python, so the DAGs, the serving app
and the tests never shell out to ``feast``.

Online store: SQLite by default; ``LAMBDAREC_ONLINE_STORE=redis`` switches to Redis at
``redis_host:redis_port`` (database ``redis_db``). Everything comes from one
:class:`~lambdarec.config.Settings`. Feature names are returned in full (``<view>__<feature>``)
because several views share names (``views_7d``, ``category``, ``user_id``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from lambdarec.config import get_settings
from lambdarec.features.feastlib import import_feast
from lambdarec.features.paths import FEATURE_REPO_DIR, feast_paths, pinned_lake_dir
from lambdarec.tables import FEATURE_TABLES, SESSION_FEATURES, TRENDING_ITEMS, newest_partition

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_contents import RepoContents
    from feast.value_type import ValueType

    from lambdarec.config import Settings

log = logging.getLogger(__name__)

#: The repo's modules, in dependency order (each imports the ones before it by bare name,
#: which is how ``feast apply`` imports a repo too).
REPO_MODULES = ("entities", "data_sources", "features", "feature_services")
TEMPLATE = FEATURE_REPO_DIR / "feature_store.yaml.template"

#: Views fed by the daily batch job; the default of :func:`materialize`.
BATCH_VIEWS: tuple[str, ...] = tuple(t.name for t in FEATURE_TABLES)
#: Views fed by the speed layer through push sources (view -> push source).
PUSH_SOURCES: dict[str, str] = {
    SESSION_FEATURES.name: "session_features_push",
    TRENDING_ITEMS.name: "trending_items_push",
}
SERVICES = ("retrieval_v1", "ranking_v1")
#: The online stores (``lambdarec.features.online``: Feast's SQLite and Redis stores under one
#: rule, per key the newest event time wins), by their class paths (Feast's ``type:``).
ONLINE_SQLITE = "lambdarec.features.online.NewestWinsSqliteOnlineStore"
ONLINE_REDIS = "lambdarec.features.online.NewestWinsRedisOnlineStore"
#: The variable the rendered ``feature_store.yaml`` names for the Redis password (Settings' own).
REDIS_PASSWORD_ENV = "LAMBDAREC_REDIS_PASSWORD"


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def render_feature_store_yaml(settings: Settings | None = None) -> str:
    """The ``feature_store.yaml`` text for these settings (absolute paths under the state dir)."""
    settings = _settings(settings)
    paths = feast_paths(settings)
    # Both under the one rule of lambdarec.features.online: per key, the newest event time wins.
    if settings.online_store == "redis":
        connection = f"{settings.redis_host}:{settings.redis_port},db={settings.redis_db}"
        if settings.redis_password.get_secret_value():
            # A reference Feast expands from the environment when it loads the file: the
            # password never lands in the rendered file on the state volume.
            connection += f",password=${{{REDIS_PASSWORD_ENV}}}"
        online = f'  type: {ONLINE_REDIS}\n  connection_string: "{connection}"'
    else:
        online = f"  type: {ONLINE_SQLITE}\n  path: {paths.online_db.resolve()}"
    return Template(_template()).substitute(
        project=settings.feast_project,
        registry_path=str(paths.registry.resolve()),
        online_store=online,
    )


@functools.cache
def _template() -> str:
    return TEMPLATE.read_text()


def write_feature_store_yaml(settings: Settings | None = None) -> Path:
    """Render the yaml into ``<state_dir>/feast/`` (rewritten only when it changed)."""
    settings = _settings(settings)
    paths = feast_paths(settings)
    text = render_feature_store_yaml(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.yaml.exists() or paths.yaml.read_text() != text:
        paths.yaml.write_text(text)
    return paths.yaml


_STORES: dict[str, FeatureStore] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings: Settings | None = None) -> FeatureStore:
    """A Feast ``FeatureStore`` for these settings, one per rendered config in this process."""
    settings = _settings(settings)
    key = f"{feast_paths(settings).yaml}\n{render_feature_store_yaml(settings)}"
    cached = _STORES.get(key)
    if cached is not None:
        return cached
    import_feast()
    from feast import FeatureStore

    # A registry refresh logs at INFO on every read once the cache expires: noise in task logs.
    logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)
    with _STORES_LOCK:
        if key not in _STORES:
            password = settings.redis_password.get_secret_value()
            if settings.online_store == "redis" and password:
                # Feast expands the file's ${...} from this process's environment; settings read
                # from a .env file (or built in code) are not there yet.
                os.environ[REDIS_PASSWORD_ENV] = password
            yaml_path = write_feature_store_yaml(settings)
            _STORES[key] = FeatureStore(repo_path=str(yaml_path.parent), fs_yaml_file=yaml_path)
            enable_wal(settings)
        return _STORES[key]


def enable_wal(settings: Settings) -> None:
    """Put the SQLite online store in write-ahead-log mode (persistent in the file).

    In SQLite's default rollback-journal mode a writer needs every reader gone: with serving (or a
    prober) reading all the time, the pusher's writes waited up to the 5 s busy timeout, and the
    freshness p50 was seconds. In WAL mode readers and the one writer do not block each other.
    """
    if settings.online_store != "sqlite":
        return
    import sqlite3

    db = feast_paths(settings).online_db
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=30)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("the SQLite online store at %s stays in %s mode", db, mode)
    finally:
        conn.close()


#: Definitions resolved from the registry, per (store, kind, name), for DEFINITION_CACHE_S:
#: resolving one decodes the whole registry, which costs more than the read or write it serves.
_DEFINITIONS: dict[tuple[int, str, str], tuple[float, Any]] = {}
DEFINITION_CACHE_S = 60.0


def cached_definition(fs: FeatureStore, kind: Literal["service", "view"], name: str) -> Any:
    """A feature service or feature view of ``fs``, re-read from the registry once a minute."""
    key = (id(fs), kind, name)
    now = time.monotonic()
    hit = _DEFINITIONS.get(key)
    if hit is None or now - hit[0] > DEFINITION_CACHE_S:
        getter = fs.get_feature_service if kind == "service" else fs.get_feature_view
        hit = (now, getter(name))
        _DEFINITIONS[key] = hit
    return hit[1]


def _service(fs: FeatureStore, name: str) -> FeatureService:
    return cached_definition(fs, "service", name)  # type: ignore[no-any-return]


_LOAD_LOCK = threading.Lock()


def load_definitions(settings: Settings | None = None) -> RepoContents:
    """Import ``feature_repo/`` with its file sources pointing at these settings' lake.

    The repo's modules import each other by bare name (as ``feast apply`` does); they are
    imported fresh each time and taken out of ``sys.modules`` afterwards, so generic names
    like ``features`` never shadow anything else in the process.
    """
    import_feast()
    from feast import Entity, FeatureService, FeatureView, PushSource
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.project import Project
    from feast.repo_contents import RepoContents

    settings = _settings(settings)
    repo = str(FEATURE_REPO_DIR)
    objects: list[Any] = []
    with _LOAD_LOCK, pinned_lake_dir(settings.lake_dir):
        _forget_repo_modules()
        sys.path.insert(0, repo)
        try:
            for name in REPO_MODULES:
                module = importlib.import_module(name)
                objects.extend(vars(module).values())
        finally:
            sys.path.remove(repo)
            _forget_repo_modules()

    def unique(kind: type) -> list[Any]:
        seen: list[Any] = []
        for obj in objects:
            if isinstance(obj, kind) and not any(obj is s for s in seen):
                seen.append(obj)
        return seen

    views = unique(FeatureView)
    sources = unique(DataSource)
    for src in list(sources):
        if isinstance(src, PushSource) and src.batch_source is not None:
            sources.append(src.batch_source)
    for view in views:
        for src in (view.batch_source, view.stream_source):
            if src is not None and not any(src is s for s in sources):
                sources.append(src)
    return RepoContents(
        projects=[Project(name=settings.feast_project)],
        data_sources=sources,
        feature_views=views,
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        entities=[*unique(Entity), DUMMY_ENTITY],
        feature_services=unique(FeatureService),
        permissions=[],
    )


def _forget_repo_modules() -> None:
    for name in REPO_MODULES:
        module = sys.modules.get(name)
        if module is not None and str(getattr(module, "__file__", "")).startswith(
            str(FEATURE_REPO_DIR)
        ):
            del sys.modules[name]


def plan(settings: Settings | None = None) -> str:
    """What :func:`apply` would change in the registry and the online store, as text."""
    fs = get_store(settings)
    registry_diff, infra_diff, _ = fs.plan(load_definitions(settings))
    return f"{registry_diff.to_string()}\n{infra_diff.to_string()}".strip()


def missing_views(names: Sequence[str], settings: Settings | None = None) -> list[str]:
    """Which of the feature views ``names`` the registry does not hold (all of them when it has
    never been applied: an empty registry file is no proof of an apply)."""
    fs = get_store(settings)
    fs.refresh_registry()
    held = {view.name for view in fs.list_feature_views()}
    return [name for name in names if name not in held]


def apply(settings: Settings | None = None) -> str:
    """``feast apply`` for these settings: register the repo, drop what it no longer defines,
    create the online tables. Idempotent. Returns the plan that was applied."""
    import_feast()
    from feast.project import Project
    from feast.repo_operations import extract_objects_for_apply_delete

    fs = get_store(settings)
    repo = load_definitions(settings)
    project = repo.projects[0].name
    registry_diff, infra_diff, _ = fs.plan(repo)
    to_apply, to_delete, _, _ = extract_objects_for_apply_delete(project, fs.registry, repo)
    to_apply = [obj for obj in to_apply if not isinstance(obj, Project)]
    fs.apply([*repo.projects, *to_apply], objects_to_delete=to_delete, partial=False)
    summary = f"{registry_diff.to_string()}\n{infra_diff.to_string()}".strip()
    log.info("feast apply (%s): %s", fs.config.online_store.type, summary or "no changes")
    return summary


def materialize(
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
    views: Sequence[str] | None = None,
) -> list[str]:
    """Load the rows stamped in ``[start, end]`` (both ends included) into the online store.

    The default views are the batch tables; the push views are written online by the speed
    layer itself. Pass the run's data interval: re-running it writes the same values.
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"materialize needs start < end, got {start} .. {end}")
    names = list(views) if views else list(BATCH_VIEWS)
    lake = _settings(settings).lake_dir
    tables = {t.name: t for t in (*FEATURE_TABLES, SESSION_FEATURES, TRENDING_ITEMS)}
    missing = [
        str(tables[n].path(lake))
        for n in names
        if n in tables and newest_partition(tables[n].path(lake)) is None
    ]
    if missing:
        raise FileNotFoundError(f"no feature partitions to materialize in {', '.join(missing)}")
    fs = get_store(settings)
    by_feast = []
    for name in names:
        view = fs.get_feature_view(name)
        if _materialize_parquet(fs, view, start, end) is None:
            by_feast.append(name)
    if by_feast:
        fs.materialize(start_date=start, end_date=end, feature_views=by_feast)
    return names


def _materialize_parquet(
    fs: FeatureStore, view: FeatureView, start: datetime, end: datetime
) -> int | None:
    """Feast's materialisation of ``view`` for ``[start, end]`` (both ends included), read with
    pyarrow: the rows stamped in the interval, the newest per entity key (by event time, then
    created time), converted and written by Feast's own functions, the interval recorded in the
    registry. The rows written; None when the view's source is not a plain Parquet
    ``FileSource`` (a warehouse, a field mapping), left to Feast.

    Feast's file offline store reads the whole source with dask and filters it afterwards; on
    ~100k rows a day, dask's tokenising of the list columns (pickling them) took over half of
    the daily run's materialisation, and the read grows with every day kept in the lake. Here
    the filter is pushed into the Parquet scan."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from feast import FileSource
    from feast.utils import _convert_arrow_to_proto
    from tqdm.auto import tqdm

    source = view.batch_source
    if not isinstance(source, FileSource) or source.field_mapping or not view.online:
        return None
    ts, created = source.timestamp_field, source.created_timestamp_column or None
    keys = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
    columns = list(dict.fromkeys([*keys, *(f.name for f in view.features), ts]))
    if created:
        columns.append(created)
    t0 = time.monotonic()
    stamp = ds.field(ts)
    table = ds.dataset(source.path, format="parquet").to_table(
        columns=columns,
        filter=(stamp >= pa.scalar(start, pa.timestamp("us", "UTC")))
        & (stamp <= pa.scalar(end, pa.timestamp("us", "UTC"))),
    )
    if table.num_rows:
        order = [(ts, "ascending"), *([(created, "ascending")] if created else [])]
        table = table.take(pc.sort_indices(table, sort_keys=order))
        last = ~table.select(list(keys)).to_pandas().duplicated(keep="last").to_numpy()
        table = table.take(pa.array(np.flatnonzero(last))).combine_chunks()
    config = fs.config
    provider = fs._get_provider()  # noqa: SLF001 - the provider Feast's materialize writes with
    size = config.materialization_config.online_write_batch_size or max(table.num_rows, 1)
    with tqdm(total=table.num_rows, desc=view.name, unit="row", leave=False) as bar:
        for batch in table.to_batches(max_chunksize=size):
            rows = _convert_arrow_to_proto(batch, view, keys)
            provider.online_write_batch(config, view, rows, bar.update)
    fs.registry.apply_materialization(view, fs.project, start, end)
    log.info(
        "materialized %s: %d rows stamped %s .. %s in %.1f s",
        view.name,
        table.num_rows,
        start.isoformat(),
        end.isoformat(),
        time.monotonic() - t0,
    )
    return table.num_rows


def get_online_features(
    features: str | Sequence[str],
    entity_rows: Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
) -> dict[str, list[Any]]:
    """Online features for ``entity_rows``: a service name (``"ranking_v1"``) or refs
    (``"item_stats:views_7d"``). Columns are the join keys and ``<view>__<feature>``."""
    fs = get_store(settings)
    refs = _service(fs, features) if isinstance(features, str) else list(features)
    response = fs.get_online_features(
        features=refs, entity_rows=[dict(r) for r in entity_rows], full_feature_names=True
    )
    return response.to_dict()


class _ViewRead(NamedTuple):
    """One feature view's part of an online read: the view, its join keys with their value
    types, and the features wanted from it."""

    view: FeatureView
    join_keys: list[tuple[str, ValueType]]
    names: list[str]


_PLANS: dict[tuple[int, tuple[str, ...]], tuple[float, list[_ViewRead]]] = {}


def _online_plan(fs: FeatureStore, features: str | Sequence[str]) -> list[_ViewRead]:
    """The views and features behind a service name or references, re-resolved once a minute
    (as :func:`cached_definition` re-reads definitions)."""
    refs = _feature_refs(fs, features)
    key = (id(fs), tuple(refs))
    now = time.monotonic()
    hit = _PLANS.get(key)
    if hit is not None and now - hit[0] <= DEFINITION_CACHE_S:
        return hit[1]
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        view, sep, name = ref.partition(":")
        if not sep or not name:
            raise ValueError(f"feature reference {ref!r}: write it as '<view>:<feature>'")
        by_view.setdefault(view, []).append(name)
    plan = []
    for view_name, names in by_view.items():
        view = cached_definition(fs, "view", view_name)
        types = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
        plan.append(_ViewRead(view, [(k, types[k]) for k in view.join_keys], names))
    _PLANS[key] = (now, plan)
    return plan


def read_online(
    features: str | Sequence[str],
    entity_rows: Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
    *,
    store: FeatureStore | None = None,
) -> dict[str, list[Any]]:
    """:func:`get_online_features` for the request path: the same columns and values, read with
    the online store's own ``online_read`` per feature view, without the SDK's per-call work.

    Feast's ``FeatureStore.get_online_features`` resolves the references, builds a protobuf
    response and converts it back on every call: most of a one-row read's CPU in serving.
    Here the references are resolved once a minute and the stored values converted straight to
    Python. What differs: no on-demand transformations (none is defined, and a reference to an
    on-demand view raises, as a regular view of that name does not exist), and every row must
    hold the join keys of each view it reads (a missing one raises ``KeyError`` naming it).

    ``store``: the settings' :func:`get_store`, when the caller keeps it (finding it renders the
    config, ~50 us per call).
    """
    import_feast()
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

    fs = store if store is not None else get_store(settings)
    online_store = fs._get_provider().online_store  # noqa: SLF001 - the store's own reader
    rows = list(entity_rows)
    out: dict[str, list[Any]] = {key: [r.get(key) for r in rows] for key in (rows[:1] or [{}])[0]}
    for part in _online_plan(fs, features):
        columns = []
        for key, value_type in part.join_keys:
            try:
                columns.append(python_values_to_proto_values([r[key] for r in rows], value_type))
            except KeyError:
                raise KeyError(
                    f"{part.view.name} needs the join key {key!r} in every entity row"
                ) from None
        names = [k for k, _ in part.join_keys]
        keys = [
            EntityKey(join_keys=names, entity_values=values)
            for values in zip(*columns, strict=True)
        ]
        # A copy: the Redis store appends its timestamp key to the list it is given.
        read = online_store.online_read(
            config=fs.config,
            table=part.view,
            entity_keys=keys,
            requested_features=list(part.names),
        )
        for name in part.names:
            column: list[Any] = []
            for _ts, values in read:
                value = values.get(name) if values else None
                column.append(
                    feast_value_type_to_python_type(value)
                    if value is not None and value.WhichOneof("val")
                    else None
                )
            out[f"{part.view.name}__{name}"] = column
    return out


def get_historical_features(
    entity_df: pd.DataFrame,
    features: str | Sequence[str],
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Point-in-time correct training rows: for each entity row (keys + ``event_timestamp``)
    the latest feature values stamped at or before its timestamp and within each view's TTL.

    The result keeps every input row, in order, with nulls where a view has no usable value.
    Feast's file offline store instead drops the whole entity row when one view has rows for
    the entity but none inside the TTL window (and reorders rows), so each view is joined on
    its own and the pieces are put back together here.
    """
    import pandas as pd

    if "event_timestamp" not in entity_df.columns:
        raise ValueError("entity_df needs an event_timestamp column (the instant to look up)")
    fs = get_store(settings)
    by_view: dict[str, list[str]] = {}
    for ref in _feature_refs(fs, features):
        by_view.setdefault(ref.split(":", 1)[0], []).append(ref)
    rows = entity_df.reset_index(drop=True).copy()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True)
    rows["_lambdarec_row"] = range(len(rows))
    result = rows.set_index("_lambdarec_row")
    for view, refs in by_view.items():
        source = fs.get_feature_view(view).batch_source
        path = Path(getattr(source, "path", "") or "")
        if path.is_absolute() and not any(path.glob("**/*.parquet")):
            # No history yet (e.g. the speed layer has logged nothing): nulls, not a crash.
            log.warning("no rows under %s: %s features are null", path, view)
            for ref in refs:
                result[ref.replace(":", "__", 1)] = None
            continue
        job = fs.get_historical_features(entity_df=rows, features=refs, full_feature_names=True)
        out = job.to_df().drop_duplicates("_lambdarec_row").set_index("_lambdarec_row")
        result = result.join(out[[c for c in out.columns if c not in rows.columns]], how="left")
    return result.sort_index().reset_index(drop=True)


def _feature_refs(fs: FeatureStore, features: str | Sequence[str]) -> list[str]:
    """``view:feature`` references of a feature service (by name) or a list of references."""
    if not isinstance(features, str):
        return list(features)
    service = _service(fs, features)
    return [
        f"{projection.name_to_use()}:{field.name}"
        for projection in service.feature_view_projections
        for field in projection.features
    ]


PushTo = Literal["online", "offline", "online_and_offline"]


def push(
    view: str,
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
    to: PushTo = "online",
) -> int:
    """Push speed-layer rows of ``view`` (``session_features`` or ``trending_items``).

    Rows carry every column of the view's table spec (lambdarec.tables), including
    ``event_timestamp``. ``online`` is the normal path: the stream job logs the same rows to
    the lake itself, which is the history training reads.
    """
    import pandas as pd

    import_feast()
    from feast.data_source import PushMode

    if view not in PUSH_SOURCES:
        raise ValueError(f"{view!r} is not a push view; use one of {', '.join(PUSH_SOURCES)}")
    table = SESSION_FEATURES if view == SESSION_FEATURES.name else TRENDING_ITEMS
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in table.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{view} rows lack column(s) {', '.join(missing)}")
    df = df[list(table.columns)]
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    mode = {
        "online": PushMode.ONLINE,
        "offline": PushMode.OFFLINE,
        "online_and_offline": PushMode.ONLINE_AND_OFFLINE,
    }[to]
    get_store(settings).push(PUSH_SOURCES[view], df, to=mode)
    return len(df)


def push_session_features(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
) -> int:
    """Push session rows online (the speed layer's call, one per event or micro-batch)."""
    return push(SESSION_FEATURES.name, rows, settings)


def push_trending_items(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    settings: Settings | None = None,
) -> int:
    return push(TRENDING_ITEMS.name, rows, settings)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
