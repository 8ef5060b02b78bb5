"""What the operator dashboard reads from the platform, one source per function.

Each function answers a dict of figures, or raises :class:`Unavailable` with one line naming
what did not answer and where: the dashboard shows that line in place of the figures and keeps
the others. Nothing here keeps state; rates come from the caller comparing two readings.

* :func:`kafka_figures`: the events topic's total offset (events ever produced: its growth is the
  events in per second), the speed layer's consumer lag and the dead-letter topic's size;
* :func:`pusher_figures`: the feature pusher's heartbeat (feature freshness p50/p99, its lag,
  retries, dead letters), written every second by the platform's ``feature-pusher`` service;
* :func:`champion_figures`: the champion's registry version and its offline metrics (MLflow);
* :func:`dag_runs`: the last runs of each DAG, from Airflow's REST API (v2, JWT from
  ``/auth/token``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

    from lambdarec.config import Settings

#: Seconds any one source may take to answer before the dashboard shows it as unavailable.
TIMEOUT_S = 3.0
#: A heartbeat older than this means the pusher is not running (it beats every second).
HEARTBEAT_STALE_S = 10.0
#: What the dashboard shows of a DAG run.
RUN_FIELDS = ("run_id", "state", "run_type", "logical_date", "start_date", "end_date")


class Unavailable(RuntimeError):
    """A source did not answer; the message says which, where, and what to check."""


def kafka_figures(settings: Settings, timeout_s: float = TIMEOUT_S) -> dict[str, int]:
    """``events_offset`` (the events topic's high watermarks summed: every event produced so
    far), ``lag`` (events the speed layer's consumer group has not committed) and
    ``dead_letters`` (messages in the dead-letter topic)."""
    from confluent_kafka import KafkaException, TopicPartition

    from lambdarec.speed.control import GROUP_ID
    from lambdarec.streaming.kafka import committed_offsets, probe_consumer

    topic, dlq = settings.topic_events, settings.topic_dead_letter
    try:
        with probe_consumer(settings, GROUP_ID) as probe:
            meta = probe.list_topics(timeout=timeout_s).topics
            if topic not in meta:
                raise Unavailable(
                    f"the topic {topic} does not exist at {settings.bootstrap_servers}"
                )
            offset = lag = 0
            # Retried while the group's coordinator moves or loads (a broker just started).
            committed = committed_offsets(
                probe, topic, sorted(meta[topic].partitions), timeout_s=timeout_s, attempts=3
            )
            for partition, done in committed.items():
                low, high = probe.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s
                )
                offset += high
                lag += max(0, high - (done if done >= 0 else low))
            dead = 0
            for p in sorted(meta[dlq].partitions) if dlq in meta else ():
                low, high = probe.get_watermark_offsets(TopicPartition(dlq, p), timeout=timeout_s)
                dead += high - low
    except KafkaException as exc:
        raise Unavailable(
            f"Kafka at {settings.bootstrap_servers} did not answer ({exc.args[0].str()}); "
            "`lambdarec platform status` shows whether it runs"
        ) from None
    return {"events_offset": offset, "lag": lag, "dead_letters": dead}


def pusher_figures(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """The feature pusher's last heartbeat, with its age in seconds (``heartbeat_age_s``)."""
    from lambdarec.speed.pusher import heartbeat_path

    path = heartbeat_path(settings)
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        raise Unavailable(
            f"no feature-pusher heartbeat at {path}; start it with "
            "`lambdarec platform up feature-pusher`"
        ) from None
    if age > HEARTBEAT_STALE_S:
        raise Unavailable(
            f"the feature pusher's heartbeat is {age:.0f} s old ({path}): it is not running; "
            "`lambdarec platform status` and its log say why"
        )
    return {**beat, "heartbeat_age_s": round(age, 1)}


def champion_figures(settings: Settings) -> dict[str, Any]:
    """The two-tower champion's registry version, run and offline metrics (online ones, which
    the A/B readout logs on the same run, left out), or ``{"version": None}`` before any."""
    from lambdarec.monitoring.ab_mlflow import server_down
    from lambdarec.registry import TWO_TOWER, ModelRegistry

    down = server_down(settings.mlflow_uri, timeout_s=TIMEOUT_S)
    if down is not None:
        raise Unavailable(down)
    registry = ModelRegistry.from_settings(settings, TWO_TOWER)
    try:
        champion = registry.get_champion()
        if champion is None:
            return {"model": TWO_TOWER, "version": None, "run_id": None, "metrics": {}}
        metrics = registry.client.get_run(champion.run_id).data.metrics
    except Exception as exc:  # noqa: BLE001 - any tracking failure is "unavailable", named
        raise Unavailable(
            f"the MLflow registry at {settings.mlflow_uri} did not answer: {exc}"[:300]
        ) from None
    return {
        "model": TWO_TOWER,
        "version": champion.version,
        "run_id": champion.run_id,
        "metrics": {k: v for k, v in sorted(metrics.items()) if not k.startswith("online.")},
    }


def airflow_login(
    base_url: str, username: str, password: str, *, timeout_s: float = TIMEOUT_S
) -> requests.Session:
    """A session of Airflow's REST API at ``base_url`` with the bearer token ``/auth/token``
    gave ``username``; :class:`Unavailable` when the login is refused (other failures raise
    ``requests``' own errors for the caller to word)."""
    import requests

    http = requests.Session()
    token = http.post(
        f"{base_url}/auth/token",
        json={"username": username, "password": password},
        timeout=timeout_s,
    )
    if token.status_code in (401, 403):
        http.close()
        raise Unavailable(
            f"Airflow at {base_url} refused {username!r}'s login (HTTP {token.status_code}); "
            "check LAMBDAREC_AIRFLOW_USERNAME and LAMBDAREC_AIRFLOW_PASSWORD"
        )
    token.raise_for_status()
    http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    return http


def dag_runs(
    base_url: str,
    username: str,
    password: str | None,
    *,
    runs: int = 3,
    timeout_s: float = TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Every DAG of Airflow at ``base_url`` with its ``runs`` newest runs (state, run type,
    logical date, start and end), newest first: one token from ``/auth/token``, one list of DAGs,
    one list of runs per DAG."""
    import requests

    try:
        requests.get(f"{base_url}/api/v2/monitor/health", timeout=timeout_s)
    except requests.RequestException as exc:
        raise Unavailable(
            f"Airflow's API at {base_url} is not reachable ({type(exc).__name__}); "
            "`lambdarec platform up airflow` starts it"
        ) from None
    if not password:
        raise Unavailable(
            f"no Airflow password for {username!r}: set LAMBDAREC_AIRFLOW_PASSWORD (the local "
            "platform's is generated at Airflow's first start)"
        )
    try:
        with airflow_login(base_url, username, password, timeout_s=timeout_s) as http:
            listed = http.get(f"{base_url}/api/v2/dags", params={"limit": 100}, timeout=timeout_s)
            listed.raise_for_status()
            out = []
            for dag in sorted(listed.json()["dags"], key=lambda d: d["dag_id"]):
                answer = http.get(
                    f"{base_url}/api/v2/dags/{dag['dag_id']}/dagRuns",
                    params={"limit": str(runs), "order_by": "-run_after"},
                    timeout=timeout_s,
                )
                answer.raise_for_status()
                out.append(
                    {
                        "dag_id": dag["dag_id"],
                        "paused": bool(dag.get("is_paused")),
                        "runs": [
                            {k: r.get(k) for k in RUN_FIELDS} for r in answer.json()["dag_runs"]
                        ],
                    }
                )
    except requests.RequestException as exc:
        raise Unavailable(
            f"Airflow's API at {base_url} is not reachable ({type(exc).__name__}); "
            "`lambdarec platform up airflow` starts it"
        ) from None
    return out
