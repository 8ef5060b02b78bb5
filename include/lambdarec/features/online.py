"""The online store's one rule, on every backend: per key, the newest event time wins.

Feast's stores disagreed. SQLite wrote every row (re-running an older day's materialisation
rolled the online store back behind the speed layer); Redis skipped a row stamped earlier than
the stored one *or at the same instant* (two events of a session in the same millisecond: the
second, with the higher counts, was dropped). These subclasses put one rule in front of both:

* within a write, the newest row of each key is kept (the later one on a tie);
* a row is written when the key has nothing stored, or its event time is at or after the stored
  one (a tie is an update of the same instant: the later write wins);
* so a batch materialisation never overwrites a newer speed-layer value, and a replayed older
  batch leaves the store as it is.

The stored times are read before the write; a write racing another one for the same key
between the two can still land out of order (the window is one round trip).

``lambdarec.features.store.render_feature_store_yaml`` selects them (``type:`` is the class's
path: ``store.ONLINE_SQLITE``, ``store.ONLINE_REDIS``); the Redis one writes with Feast's ``skip_dedup`` path, the rule being applied here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.utils import make_tzaware

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from feast import FeatureView
    from feast.repo_config import RepoConfig

Row = tuple[Any, dict[str, Any], "datetime", Any]


def newest_rows(
    data: Sequence[Row],
    stored: Callable[[list[Any]], list[datetime | None]],
) -> list[Row]:
    """The rows of ``data`` the rule writes (see the module doc), in their input order;
    ``stored(entity_keys)`` answers the stored event time of each key (None: nothing)."""
    latest: dict[bytes, int] = {}
    for n, (key, _, ts, _) in enumerate(data):
        k = key.SerializeToString(deterministic=True)
        if k not in latest or make_tzaware(ts) >= make_tzaware(data[latest[k]][2]):
            latest[k] = n
    picked = sorted(latest.values())
    if not picked:
        return []
    before = stored([data[n][0] for n in picked])
    return [
        data[n]
        for n, old in zip(picked, before, strict=True)
        if old is None or make_tzaware(data[n][2]) >= make_tzaware(old)
    ]


class _NewestWins:
    """The rule in front of a Feast online store's writes (mixed in before the store class)."""

    def _stored_times(
        self, config: RepoConfig, table: FeatureView
    ) -> Callable[[list[Any]], list[datetime | None]]:
        """The stored event time of each key, through the store's own read."""
        feature = [table.features[0].name] if table.features else None

        def read(keys: list[Any]) -> list[datetime | None]:
            online_read = self.online_read  # type: ignore[attr-defined]
            return [ts for ts, _ in online_read(config, table, keys, feature)]

        return read

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        kept = newest_rows(data, self._stored_times(config, table))
        if kept:
            self._write(config, table, kept)
        if progress:
            progress(len(data))

    def _write(self, config: RepoConfig, table: FeatureView, data: list[Row]) -> None:
        """The store's own write of rows the rule kept."""
        super().online_write_batch(config, table, data, None)  # type: ignore[misc]


class NewestWinsSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["lambdarec.features.online.NewestWinsSqliteOnlineStore"] = (
        "lambdarec.features.online.NewestWinsSqliteOnlineStore"  # type: ignore[assignment]
    )


#: Keys per query of the SQLite store's stored-time read (under SQLite's variable limit).
SQLITE_CHUNK = 500


class NewestWinsSqliteOnlineStore(_NewestWins, SqliteOnlineStore):
    """Feast's SQLite online store under the newest-event-time rule."""

    def _stored_times(
        self, config: RepoConfig, table: FeatureView
    ) -> Callable[[list[Any]], list[datetime | None]]:
        """The stored event time of each key: one row per key (the view's first feature), in
        chunks (Feast's own read takes every feature of every key in one statement, which a
        materialisation's batch would take past SQLite's variable limit)."""
        import sqlite3

        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        def read(keys: list[Any]) -> list[datetime | None]:
            if not table.features:
                return [None] * len(keys)
            versioning = config.registry.enable_online_feature_view_versioning
            name = _quote_id(_table_id(config.project, table, versioning))
            version = config.entity_key_serialization_version
            binary = [
                serialize_entity_key(k, entity_key_serialization_version=version) for k in keys
            ]
            found: dict[bytes, datetime] = {}
            conn = self._get_conn(config)
            for start in range(0, len(binary), SQLITE_CHUNK):
                part = binary[start : start + SQLITE_CHUNK]
                try:
                    rows = conn.execute(
                        f"SELECT entity_key, event_ts FROM {name} "  # noqa: S608 - Feast's id
                        f"WHERE feature_name = ? AND entity_key IN ({','.join('?' * len(part))})",
                        [table.features[0].name, *part],
                    ).fetchall()
                except sqlite3.OperationalError as exc:  # the table is created on first write
                    if "no such table" in str(exc):
                        return [None] * len(keys)
                    raise
                found.update((bytes(k), ts) for k, ts in rows)
            return [found.get(k) for k in binary]

        return read

    def _write(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
    ) -> None:
        """Feast's SQLite upsert, the same rows, sent as one ``executemany`` per write.

        Feast executes the upsert once per feature of every row (12 statements per session row):
        at thousands of rows a second that was most of the pusher's CPU. With the
        OpenAI-compatible or vector columns on, Feast's own write runs.
        """
        online = config.online_store
        if getattr(online, "enable_openai_compatible_store", False) or online.vector_enabled:
            SqliteOnlineStore.online_write_batch(self, config, table, data, None)
            return
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import extract_text_and_num
        from feast.infra.online_stores.sqlite import _quote_id, _table_id
        from feast.utils import to_naive_utc

        versioning = config.registry.enable_online_feature_view_versioning
        name = _quote_id(_table_id(config.project, table, versioning))
        upsert = (
            f"INSERT INTO {name} (entity_key, feature_name, value, value_text, event_ts, "
            "created_ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO "
            "UPDATE SET value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts;"
        )
        version = config.entity_key_serialization_version
        rows = []
        for entity_key, values, timestamp, created in data:
            key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
            ts = to_naive_utc(timestamp)
            created_ts = to_naive_utc(created) if created is not None else None
            for feature, val in values.items():
                text, _ = extract_text_and_num(val, False)
                rows.append((key, feature, val.SerializeToString(), text, ts, created_ts))
        conn = self._get_conn(config)
        with conn:
            conn.executemany(upsert, rows)


class NewestWinsRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["lambdarec.features.online.NewestWinsRedisOnlineStore"] = (
        "lambdarec.features.online.NewestWinsRedisOnlineStore"  # type: ignore[assignment]
    )
    #: The rule is applied before the write: Feast's own check (which drops ties) is skipped.
    skip_dedup: bool = True


class NewestWinsRedisOnlineStore(_NewestWins, RedisOnlineStore):
    """Feast's Redis online store under the newest-event-time rule."""

    def _write(self, config: RepoConfig, table: FeatureView, data: list[Row]) -> None:
        """Feast's ``skip_dedup`` write (one pipeline, one HSET per row), the same commands,
        with each feature's hash field computed once per write instead of once per row (a
        murmur3 and two hex conversions per feature of every row)."""
        online = config.online_store
        if not online.skip_dedup:
            RedisOnlineStore.online_write_batch(self, config, table, data, None)
            return
        from feast import utils
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.infra.online_stores.redis import _versioned_fv_name
        from google.protobuf.timestamp_pb2 import Timestamp

        client = self._get_client(online)
        view = _versioned_fv_name(table, config)
        ts_field = f"_ts:{view}"
        fields: dict[str, bytes] = {}
        version = config.entity_key_serialization_version
        with client.pipeline(transaction=False) as pipe:
            for entity_key, values, timestamp, _ in data:
                key = _redis_key(
                    config.project, entity_key, entity_key_serialization_version=version
                )
                ts = Timestamp()
                ts.FromDatetime(utils.make_tzaware(timestamp))
                mapping: dict[str | bytes, bytes] = {ts_field: ts.SerializeToString()}
                for name, val in values.items():
                    field = fields.get(name)
                    if field is None:
                        field = fields[name] = _mmh3(f"{view}:{name}")
                    mapping[field] = val.SerializeToString()
                pipe.hset(key, mapping=mapping)
                if online.key_ttl_seconds:
                    pipe.expire(name=key, time=online.key_ttl_seconds)
            pipe.execute()
