"""One settings object for the whole project.

Every endpoint, port and folder is read from environment variables prefixed ``LAMBDAREC_`` (or a
``.env`` file in the repository root), with local single-machine defaults. Pointing a component at
a cluster is a matter of setting its variable, e.g. ``LAMBDAREC_KAFKA_BOOTSTRAP=broker-1:9092``.
Reading the settings has no side effects: no folder is created, no service is contacted.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from lambdarec.apikeys import parse_entries
from lambdarec.events import RETRY_HORIZON

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: The repository root (include/lambdarec/config.py -> two levels up from include/).
REPO_ROOT = Path(__file__).resolve().parents[2]

Port = Annotated[int, Field(ge=1, le=65535)]

#: Every port a local service of the platform listens on: they must differ, and a private
#: platform (tests, benchmarks) takes a free one for each so it never meets a running platform.
LOCAL_PORTS = (
    "kafka_port",
    "kafka_controller_port",
    "redis_port",
    "mlflow_port",
    "airflow_port",
    "serving_port",
    "reports_port",
    "milvus_port",
    "milvus_etcd_port",
    "flink_rest_port",
    "attribution_rest_port",
    "proxy_port",
)


#: The accepted values of the settings that are a choice, each with what it means (errors list them).
_CHOICES: dict[str, dict[str, str]] = {
    "online_store": {"sqlite": " (default)", "redis": ""},
    "flink_state_backend": {"hashmap": " (default: the JVM heap)", "rocksdb": " (local disk)"},
}


#: The policies an A/B variant may run (lambdarec.recommend.policies defines what each does; the
#: config cannot import the pipeline, a unit test keeps the two lists equal).
AB_POLICIES = ("pipeline", "no_ranker", "popular")


def _variant_entries(setting: str, spec: str, example: str) -> list[tuple[str, str]]:
    """The ``variant:value`` entries of a per-variant setting's ``spec`` as (variant, value)
    pairs; a malformed entry or a variant named twice is a one-line ValueError naming
    ``setting`` (``example`` shows the form)."""
    out: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        variant, sep, value = (x.strip() for x in part.partition(":"))
        if not sep or not variant or not value:
            raise ValueError(f"{setting} entry {part!r} is not {example}")
        if any(variant == seen for seen, _ in out):
            raise ValueError(f"{setting} names variant {variant!r} twice; keep one")
        out.append((variant, value))
    return out


def _known_variants(setting: str, named: Iterable[str], variants: Sequence[str] | None) -> None:
    """A one-line ValueError when ``setting`` names variants not among ``variants`` (if given)."""
    unknown = sorted(set(named) - set(variants)) if variants is not None else []
    if unknown:
        raise ValueError(
            f"{setting} names variant(s) {unknown} that are not in the A/B variants "
            f"({', '.join(variants or ())}); add them to LAMBDAREC_AB_VARIANTS or drop them"
        )


def parse_ab_policies(spec: str, variants: Sequence[str] | None = None) -> dict[str, str]:
    """``variant:policy[,variant:policy...]`` as a dict; a malformed entry, an unknown policy or
    (when ``variants`` is given) a variant not among them is a one-line ValueError."""
    setting = "LAMBDAREC_AB_POLICIES"
    out: dict[str, str] = {}
    example = "variant:policy; set it like 'baseline:popular,b:no_ranker'"
    for variant, name in _variant_entries(setting, spec, example):
        if name not in AB_POLICIES:
            raise ValueError(
                f"{setting} gives variant {variant!r} the unknown policy {name!r}; "
                f"choose from {', '.join(AB_POLICIES)}"
            )
        out[variant] = name
    _known_variants(setting, out, variants)
    return out


def parse_ab_rankers(
    spec: str, variants: Sequence[str] | None = None, *, must_exist: bool = True
) -> dict[str, Path]:
    """``variant:/path/to/deepfm[,variant:/path...]`` as a dict; a malformed entry, a variant
    named twice, a folder that does not exist (unless ``must_exist`` is off: a reader of past
    readouts) or (when ``variants`` is given) a variant not among them is a one-line ValueError.
    Whether the folder holds a readable export is checked where serving loads it
    (:func:`serving.champion.load_variant_rankers`)."""
    setting = "LAMBDAREC_AB_RANKERS"
    out: dict[str, Path] = {}
    example = "variant:folder; set it like 'treatment:/runs/2026-12-07/deepfm'"
    for variant, folder in _variant_entries(setting, spec, example):
        path = Path(folder).expanduser()
        if must_exist and not path.is_dir():
            raise ValueError(
                f"{setting} gives variant {variant!r} the folder {folder}, which does "
                "not exist; point it at a DeepFM export (a run's deepfm/ folder)"
            )
        out[variant] = path
    _known_variants(setting, out, variants)
    return out


class Settings(BaseSettings):
    """Project settings; each field maps to ``LAMBDAREC_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="LAMBDAREC_",
        env_file=str(REPO_ROOT / ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # -- folders ---------------------------------------------------------------------------
    home: Path = Field(REPO_ROOT, description="Repository root.")
    state_dir: Path = Field(
        REPO_ROOT / ".state",
        description="Ignored folder for everything the platform writes: PID files, logs, data.",
    )
    shared_data_dir: Path = Field(
        REPO_ROOT.parent / "shared" / "data",
        description="Folder holding the real datasets (Taobao, Diginetica).",
    )
    web_assets_dir: Path = Field(
        REPO_ROOT / ".state" / "web-assets",
        description="CSS/JS the Data Docs load, vendored from npm packages by `make setup` "
        "(`lambdarec quality fetch-assets`) with their licences; served by the reports site "
        "under /vendor/. Outside state_dir, so private state folders share one copy.",
    )

    # -- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "", description="Kafka bootstrap servers; empty means the local broker on kafka_port."
    )
    kafka_port: Port = 9092
    kafka_controller_port: Port = 9093
    kafka_heap: str = "768m"
    topic_events: str = "lambdarec.events"
    topic_dead_letter: str = "lambdarec.events.dlq"
    topic_session_features: str = "lambdarec.session-features"
    topic_impressions: str = "lambdarec.impressions"
    topic_trending_items: str = "lambdarec.trending-items"
    topic_attributed: str = Field(
        "lambdarec.attributed",
        description="Events attributed to the impression that showed their item (written by the "
        "attribution job, include/flink/attribution.py).",
    )
    topic_partitions: Annotated[int, Field(ge=1, le=1024)] = 3
    topic_replication: Annotated[int, Field(ge=1, le=16)] = 1

    # -- Flink speed layer -------------------------------------------------------------------
    flink_rest_port: Port = Field(
        8081, description="REST/web UI port of the speed layer's local mini-cluster."
    )
    flink_heap: str = Field(
        "1g", pattern=r"^[0-9]+[kKmMgG]$", description="JVM heap of the local mini-cluster (-Xmx)."
    )
    flink_jobmanager: str = Field(
        "",
        pattern=r"^([A-Za-z0-9_.\-]+:[0-9]{1,5})?$",
        description="A Flink session cluster's JobManager REST address (host:port) to run the "
        "speed layer on; empty means the local mini-cluster (the platform's speed-layer service).",
    )
    flink_parallelism: Annotated[int, Field(ge=1, le=256)] = Field(
        1,
        description="Parallelism of the speed layer's job (its --parallelism): 1 on the local "
        "mini-cluster; on a session cluster at most its free slots (compose: 2).",
    )
    speed_lag_alert: Annotated[int, Field(ge=1)] = Field(
        100_000,
        description="The speed_layer DAG fails its lag check when the job is this many events "
        "behind the events topic.",
    )
    speed_dedup_ttl_s: Annotated[float, Field(ge=RETRY_HORIZON.total_seconds())] = Field(
        RETRY_HORIZON.total_seconds(),
        description="How long the speed layer remembers an event_id after its first copy (a "
        "copy within it is dropped); at least the event contract's retry horizon. The state "
        "holds one entry per event of that long (an estimated ~200 bytes each on the heap).",
    )
    attribution_rest_port: Port = Field(
        8082,
        description="REST/web UI port of the attribution job's local mini-cluster (the "
        "platform's attribution service).",
    )
    attribution_window_s: Annotated[int, Field(gt=0)] = Field(
        1800,
        description="Attribution window (seconds): an event counts for an impression of its "
        "item at most this long after it (the attribution job's --window-s).",
    )
    flink_checkpoint_dir: str = Field(
        "",
        description="Checkpoint storage of the speed layer: a path or URI (s3://, hdfs://); "
        "empty means <state_dir>/flink/checkpoints.",
    )
    flink_state_backend: Literal["hashmap", "rocksdb"] = Field(
        "hashmap",
        description="Where the speed layer keeps session and item state: 'hashmap' on the JVM "
        "heap (size LAMBDAREC_FLINK_HEAP for the live sessions) or 'rocksdb' on local disk.",
    )

    # -- Redis (Feast online store option) ----------------------------------------------------
    redis_host: str = "127.0.0.1"
    redis_port: Port = 6379
    redis_db: Annotated[int, Field(ge=0)] = Field(
        0, description="Redis database number the Feast online store uses."
    )

    # -- Feast -----------------------------------------------------------------------------
    online_store: Literal["sqlite", "redis"] = Field(
        "sqlite", description="Feast online store: SQLite under the state dir, or Redis."
    )
    feast_project: str = Field("lambdarec", description="Feast project name in the registry.")

    # -- data-quality gates ----------------------------------------------------------------
    dq_row_count_min_ratio: Annotated[float, Field(ge=0)] = Field(
        0.5, description="A partition needs at least this times the previous partition's rows."
    )
    dq_row_count_max_ratio: Annotated[float, Field(gt=0)] = Field(
        2.0, description="A partition may have at most this times the previous partition's rows."
    )
    dq_max_price: Annotated[float, Field(gt=0)] = Field(
        1_000_000.0,
        description="Prices above this are absurd for the shop (the event contract allows 10M).",
    )

    # -- MLflow ----------------------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        "", description="MLflow tracking URI; empty means the local server on mlflow_port."
    )
    mlflow_port: Port = 5000
    mlflow_backend_store_uri: SecretStr = Field(
        SecretStr(""),
        description="The local MLflow server's --backend-store-uri (e.g. "
        "postgresql+psycopg2://mlflow:...@host:5432/mlflow); empty means SQLite under the state dir.",
    )
    exposure_negatives: bool = Field(
        False,
        description="Off by default: measured, it did not help (offline NDCG@10 .1961 -> .1883; "
        "live through serving a tie on CTR@10, conversion leaning lower: README, "
        "bench-exposure-ab). On: retraining adds the lake's impressions to the ranker's "
        "training queries: items shown and not clicked are negatives, the clicked one the positive, the shown "
        "position a training-only feature (serving ranks at a neutral position); off: the ranker "
        "trains on the candidate sources' lists alone.",
    )

    # -- Airflow ---------------------------------------------------------------------------
    airflow_port: Port = 8080
    airflow_parallelism: Annotated[int, Field(ge=1, le=256)] = 4
    airflow_sql_alchemy_conn: SecretStr = Field(
        SecretStr(""),
        description="The local Airflow's metadata database (its [database] sql_alchemy_conn, e.g. "
        "postgresql+psycopg2://airflow:...@host:5432/airflow); empty means SQLite under "
        "AIRFLOW_HOME.",
    )
    airflow_url: str = Field(
        "",
        pattern=r"^(https?://[A-Za-z0-9_.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9_.\-/]*)?)?$",
        description="Airflow's API server, for the operator dashboard's DAG runs (REST API v2); "
        "empty means the local one on airflow_port.",
    )
    airflow_username: str = Field(
        "admin", description="The Airflow user the operator dashboard reads DAG runs as."
    )
    airflow_password: SecretStr = Field(
        SecretStr(""),
        description="That user's password; empty means the one the local platform's Airflow "
        "generated (under its home), which the dashboard reads at each login.",
    )
    dags_paused: bool = Field(
        False,
        description="Keep the scheduled DAGs (daily_feature_pipeline, drift_monitoring, "
        "online_metrics, weekly_model_retraining) paused: `lambdarec platform up` and the end "
        "of `make demo` pause them instead of unpausing them.",
    )

    # -- Milvus (item embeddings) --------------------------------------------------------------
    milvus_uri: str = Field(
        "",
        description="Milvus URI; empty means Milvus Lite (a file under the state dir), "
        "http://host:19530 a Milvus server or cluster.",
    )
    milvus_port: Port = 19530
    milvus_etcd_port: Port = 2379
    milvus_alias: str = Field("items_serving", min_length=1, max_length=255)
    milvus_index_type: Literal["HNSW", "FLAT"] = "HNSW"
    milvus_m: Annotated[int, Field(ge=4, le=64)] = 16
    milvus_ef_construction: Annotated[int, Field(ge=8, le=4096)] = 200
    #: 100: recall@50 0.994 of the exact top 50 at 1M items (256: 0.9994) for ~60% of the
    #: Milvus server's CPU per search (bench/bench_serving.py; see docs/deployment.md).
    milvus_ef: Annotated[int, Field(ge=1, le=32768)] = 100
    milvus_keep: Annotated[int, Field(ge=1, le=100)] = 3

    # -- Spark -----------------------------------------------------------------------------
    spark_master: str = Field(
        "local[*]",
        description="Spark master of the spark_default connection: local[*] or a cluster URL "
        "(spark://host:7077, yarn, k8s://...).",
    )
    spark_executor_memory: str = Field(
        "1g",
        pattern=r"^[1-9][0-9]*[kmgt]$",
        description="Heap of each executor on a cluster master (spark.executor.memory); a "
        "standalone worker must offer at least this much (its --memory).",
    )
    spark_cores_max: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Cores the daily job takes from a cluster (spark.cores.max); 0 takes every "
        "free core, as standalone does by default.",
    )

    # -- Serving ---------------------------------------------------------------------------
    serving_port: Port = 8000
    serving_model_dir: str = Field(
        "",
        description="A two-tower export folder (export_two_tower) to serve instead of the MLflow "
        "champion: pins a model, e.g. for a benchmark; empty means the registry's champion.",
    )
    index_check_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        30.0,
        description="How often serving compares the model version behind the index alias with "
        "its query tower's, and loads the matching tower when they differ (seconds).",
    )
    ab_variants: str = Field(
        "control:100",
        description="A/B variants as name:weight,... (users are assigned by a hash of user_id).",
        pattern=r"^[A-Za-z0-9_\-]+:\d+(,[A-Za-z0-9_\-]+:\d+)*$",
    )
    ab_salt: str = Field(
        "lambdarec-ab-1",
        description="The experiment's assignment salt: a user's variant is a hash of the salt "
        "and user_id; give each new experiment a new salt, so its split is independent of the "
        "last one's.",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
    )
    ab_policies: str = Field(
        "",
        description="What each A/B variant serves, as variant:policy,... (policies: pipeline, "
        "the full served pipeline; no_ranker, every source by the blend of their scores; "
        "popular, the popularity baseline with the same exclusions and rules); a variant not "
        "listed runs pipeline; users of a variant the guardrail switched off get control's.",
    )
    ab_rankers: str = Field(
        "",
        description="Which DeepFM ranks each A/B variant, as variant:folder,... (a run's deepfm/ "
        "folder or its serving/ export), e.g. treatment:/runs/new/deepfm beside "
        "LAMBDAREC_AB_VARIANTS=control:50,treatment:50: the listed variant's lists are ranked by "
        "that model, loaded once at startup; retrieval and everything else stay the champion's. "
        "A variant not listed is ranked by the champion's ranker; a listed variant must run a "
        "ranked policy (pipeline).",
    )
    reports_port: Port = Field(8088, description="Static site of Data Docs and reports.")
    api_keys: str = Field(
        "",
        description="API keys of serving as name:scope[+scope]:sha256hex, comma-separated "
        "(scopes: events, recommend; `lambdarec api-key new` mints one); empty means the API "
        "is open (logged as a warning at startup).",
    )
    require_api_keys: bool = Field(
        False,
        description="Serving refuses to start when LAMBDAREC_API_KEYS is empty (set it in a "
        "deployment; the local platform leaves it off).",
    )
    rate_limit_rps: Annotated[float, Field(ge=0)] = Field(
        200.0,
        description="Requests a second each API key (each client IP when keys are off) may make "
        "to /events and /recommend, per serving worker process; 0 turns the limit off.",
    )
    rate_limit_burst: Annotated[int, Field(ge=1)] = Field(
        400, description="Requests a key or client IP may make at once above the steady rate."
    )
    session_bind_max: Annotated[int, Field(ge=1)] = Field(
        100_000,
        description="Sessions each serving worker remembers the user of (least recently used "
        "forgotten first); another user's request on a remembered session is refused (409).",
    )
    purchase_memory_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024 * 1024,
        description="Bytes each serving worker may hold of users' recent purchases (kept out of "
        "their lists); the least recently active users are forgotten first.",
    )
    category_cap: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5,
        description="Diversity rule: one category fills at most this share of a list (relaxed "
        "only to reach k); 1 turns it off.",
    )
    candidate_sources: str = Field(
        "vector,session_knn,sequential_rules,cooccurrence,trending,popular",
        pattern=r"^[a-z0-9_]+(,[a-z0-9_]+)*$",
        description="The recommendation pipeline's candidate sources, in order (comma-separated "
        "names of lambdarec.recommend.sources.REGISTRY).",
    )
    sr_window: Annotated[int, Field(ge=1, le=20)] = Field(
        3,
        description="Sequential rules: an item counts as following another up to this many steps "
        "later in a session, with weight 1/distance (the daily job's sequential_rules table).",
    )
    sr_decay: Annotated[float, Field(gt=0, le=1)] = Field(
        0.7,
        description="Sequential rules source: the rules of the k-th most recent item count "
        "decay**k (the newest counts 1).",
    )
    sknn_k: Annotated[int, Field(ge=1, le=1000)] = Field(
        100,
        description="Session-kNN source: the most similar past sessions whose items are scored.",
    )
    sknn_sample: Annotated[int, Field(ge=1, le=10_000)] = Field(
        200,
        description="Session-kNN: the most recent sessions kept per item (the daily job's "
        "item_sessions table) and the candidate neighbours compared per request.",
    )

    # -- drift monitoring (lambdarec.monitoring, the drift_monitoring DAG) --------------------
    drift_psi_watch: Annotated[float, Field(gt=0)] = Field(
        0.1, description="PSI at or above this marks a feature 'watch' (reported, no action)."
    )
    drift_psi_act: Annotated[float, Field(gt=0)] = Field(
        0.25, description="PSI at or above this marks a feature 'act' and triggers retraining."
    )
    drift_bins: Annotated[int, Field(ge=2, le=100)] = Field(
        10, description="Quantile bins per numeric feature, fixed from the training reference."
    )
    drift_top_categories: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="Categorical features keep their top-N reference values plus 'other'."
    )
    drift_model_name: str = Field(
        "two_tower", description="Registered model whose champion's reference profile is used."
    )
    drift_retrain_dag_id: str = Field(
        "weekly_model_retraining", description="DAG triggered when a feature drifts past act."
    )
    drift_retrain_cooldown_days: Annotated[float, Field(ge=0)] = Field(
        7.0, description="No new drift-triggered retraining within this many days of the last."
    )
    drift_skew_sample: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        500, description="Impressions whose features the skew check rebuilds from Feast (0: off)."
    )

    # -- A/B readout and guardrail (lambdarec.monitoring.ab, the online_metrics DAG) ----------
    ab_min_lists: Annotated[int, Field(ge=1)] = Field(
        1000,
        description="A/B tests need this many lists served in the variant and in control; below "
        "it the readout says 'not enough data' instead of a verdict (and the guardrail waits).",
    )
    ab_guardrail_p: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.01,
        description="The guardrail sets a variant's weight to 0 when its conversion is below "
        "control's with a p-value under this (and the minimum sample is met).",
    )
    ab_window_days: Annotated[int, Field(ge=1, le=90)] = Field(
        14,
        description="Days the A/B readout covers, ending with the run's day (its whole-period "
        "figures and the daily plots).",
    )

    # -- reverse proxy (nginx) in front of serving --------------------------------------------
    proxy_port: Port = Field(
        8001,
        description="The local platform's public serving URL: nginx in front of gunicorn "
        "(which stays on serving_port, loopback, behind it).",
    )
    proxy_client_timeout_s: Annotated[int, Field(ge=1, le=300)] = Field(
        10,
        description="The proxy drops a client whose request header takes longer than this, or "
        "whose body or reading of the answer stalls this long (client_header_timeout, "
        "client_body_timeout, send_timeout).",
    )
    proxy_max_body_kb: Annotated[int, Field(ge=1, le=102_400)] = Field(
        1024, description="Largest request body the proxy accepts (client_max_body_size), KiB."
    )
    proxy_read_timeout_s: Annotated[int, Field(ge=1, le=600)] = Field(
        30, description="How long the proxy waits for serving's answer (proxy_read_timeout)."
    )
    proxy_conns_per_ip: Annotated[int, Field(ge=1, le=100_000)] = Field(
        64,
        description="Requests one client address may have in flight at the proxy (limit_conn; "
        "more are answered 429).",
    )
    # -- credentials of the deployment's backends (docs/deployment.md, "Credentials") ----------
    # Empty by default: the local platform's services run without authentication on loopback.
    # Secrets are SecretStr, so neither a repr of the settings nor a log line shows them.
    kafka_security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "SASL_PLAINTEXT",
        description="Kafka security protocol used when KAFKA_SASL_USERNAME is set (SASL_SSL "
        "when the brokers also speak TLS).",
    )
    kafka_ssl_ca_location: str = Field(
        "",
        description="With SASL_SSL: the PEM file of the CA that signed the brokers' certificates "
        "(the deployment's certs-init writes one); empty means the system's trust store.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="Kafka SASL mechanism used when KAFKA_SASL_USERNAME is set."
    )
    kafka_sasl_username: str = Field(
        "", description="Kafka SASL user of every project client; empty means no SASL."
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="Kafka SASL password of KAFKA_SASL_USERNAME."
    )
    redis_password: SecretStr = Field(
        SecretStr(""),
        description="Redis password (requirepass) of the Feast online store; empty means none. "
        "Feast reads it from this environment variable when it opens the store.",
    )
    milvus_token: SecretStr = Field(
        SecretStr(""),
        description="Milvus credentials as user:password (or an API key); empty means none.",
    )
    #: MLflow's own variables, read under their own names: every MLflow client in the process
    #: (the registry, model loading, Airflow tasks) authenticates with them without project code.
    mlflow_tracking_username: str = Field(
        "",
        validation_alias=AliasChoices("mlflow_tracking_username"),
        description="MLflow basic-auth user (MLflow's own MLFLOW_TRACKING_USERNAME, no prefix).",
    )
    mlflow_tracking_password: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("mlflow_tracking_password"),
        description="MLflow basic-auth password (MLflow's own MLFLOW_TRACKING_PASSWORD, no prefix).",
    )

    # -- platform --------------------------------------------------------------------------
    bind_host: Literal["127.0.0.1"] = Field(
        "127.0.0.1", description="Local services listen on loopback only."
    )
    java_home: Path = Field(
        Path("/usr/lib/jvm/java-17-openjdk-amd64"),
        description="JDK used by Kafka, Spark and Flink (Java 17).",
    )
    start_timeout_s: Annotated[float, Field(gt=0, le=600)] = 120.0

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        value = value.strip()
        for part in filter(None, value.split(",")):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"LAMBDAREC_KAFKA_BOOTSTRAP entry {part!r} is not host:port; "
                    "set it like 'broker-1:9092,broker-2:9092'"
                )
        return value

    @field_validator("ab_policies")
    @classmethod
    def _check_ab_policies(cls, value: str) -> str:
        parse_ab_policies(value)
        return value.strip()

    @field_validator("ab_rankers")
    @classmethod
    def _check_ab_rankers(cls, value: str) -> str:
        parse_ab_rankers(value)
        return value.strip()

    @model_validator(mode="after")
    def _ab_policies_of_variants(self) -> Settings:
        parse_ab_policies(self.ab_policies, self.ab_variant_names)
        parse_ab_rankers(self.ab_rankers, self.ab_variant_names)
        return self

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        parse_entries(value)
        return value.strip()

    @field_validator("online_store", "flink_state_backend", mode="before")
    @classmethod
    def _check_choice(cls, value: object, info: ValidationInfo) -> object:
        choices = _CHOICES[info.field_name or ""]
        if value not in choices:
            options = " or ".join(f"{choice!r}{hint}" for choice, hint in choices.items())
            raise ValueError(
                f"LAMBDAREC_{(info.field_name or '').upper()} is {value!r}; set it to {options}"
            )
        return value

    @model_validator(mode="after")
    def _dq_band(self) -> Settings:
        if self.dq_row_count_min_ratio > self.dq_row_count_max_ratio:
            raise ValueError(
                f"LAMBDAREC_DQ_ROW_COUNT_MIN_RATIO ({self.dq_row_count_min_ratio}) is above "
                f"LAMBDAREC_DQ_ROW_COUNT_MAX_RATIO ({self.dq_row_count_max_ratio}); "
                "the row-count band would reject every partition"
            )
        return self

    @model_validator(mode="after")
    def _drift_thresholds(self) -> Settings:
        if self.drift_psi_watch > self.drift_psi_act:
            raise ValueError(
                f"LAMBDAREC_DRIFT_PSI_WATCH ({self.drift_psi_watch}) is above "
                f"LAMBDAREC_DRIFT_PSI_ACT ({self.drift_psi_act}); set watch <= act "
                "(defaults 0.1 and 0.25)"
            )
        return self

    @model_validator(mode="after")
    def _ports_distinct(self) -> Settings:
        ports = {name: getattr(self, name) for name in LOCAL_PORTS}
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(
                    f"LAMBDAREC_{name.upper()} and LAMBDAREC_{seen[port].upper()} are both {port}; "
                    "give each local service its own port"
                )
            seen[port] = name
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def ab_variant_names(self) -> list[str]:
        return [part.partition(":")[0] for part in self.ab_variants.split(",")]

    @property
    def candidate_sources_list(self) -> list[str]:
        return [name.strip() for name in self.candidate_sources.split(",") if name.strip()]

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.bind_host}:{self.kafka_port}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"

    @property
    def airflow_api_url(self) -> str:
        return (self.airflow_url or f"http://{self.bind_host}:{self.airflow_port}").rstrip("/")

    @property
    def run_dir(self) -> Path:
        """PID files and service data of the local platform."""
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def data_dir(self) -> Path:
        """Generated and loaded datasets (catalog, canonical events)."""
        return self.state_dir / "data"

    @property
    def lake_dir(self) -> Path:
        """The master dataset: events as Parquet partitioned by date."""
        return self.state_dir / "lake"

    @property
    def archive_dir(self) -> Path:
        """The speed layer's raw archive (Parquet by date, committed on Flink checkpoints); the
        daily pipeline's ``compact_archive`` task folds each day of it into ``lake_dir``."""
        return self.lake_dir / "archive"

    @property
    def checkpoint_dir(self) -> str:
        """Where the speed layer checkpoints (a local path or a URI)."""
        return self.flink_checkpoint_dir or str(self.state_dir / "flink" / "checkpoints")

    @property
    def reload_marker(self) -> Path:
        """Written by weekly_model_retraining after a promotion; serving reloads when it changes."""
        return self.state_dir / "serving" / "reload.json"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def site_dir(self) -> Path:
        """What the reports service serves: an index page and links to the generated reports."""
        return self.state_dir / "site"

    @property
    def reports_dir(self) -> Path:
        """Generated HTML reports (model evaluation, drift), one folder per kind."""
        return self.state_dir / "reports"

    @property
    def drift_reports_dir(self) -> Path:
        """Drift monitoring results: ``<day>/result.json`` and ``report.html`` per run."""
        return self.reports_dir / "drift"

    @property
    def ab_reports_dir(self) -> Path:
        """A/B readouts: ``<day>/readout.json`` and ``readout.html`` per run."""
        return self.reports_dir / "ab"

    @property
    def ab_override_path(self) -> Path:
        """The guardrail's variant-weight override, which serving re-reads when it changes."""
        return self.state_dir / "ab" / "variants.json"

    @property
    def feast_dir(self) -> Path:
        """The rendered ``feature_store.yaml``, the Feast registry and the SQLite online store."""
        return self.state_dir / "feast"

    @property
    def data_docs_dir(self) -> Path:
        """The generated Great Expectations Data Docs site (open ``index.html``)."""
        return self.state_dir / "data_docs"

    @property
    def gx_dir(self) -> Path:
        """What GX stores between runs (validation results Data Docs are rebuilt from).

        The versioned GX project itself is ``lambdarec.quality.paths.GX_DIR``."""
        return self.state_dir / "gx"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; call ``get_settings.cache_clear()`` in tests)."""
    return Settings()
