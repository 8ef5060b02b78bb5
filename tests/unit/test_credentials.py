"""The backends' credentials reach every client the project builds when they are set, and
nothing changes when they are not (the local platform runs without); no secret shows in a repr,
a rendered file or the speed layer's printed SQL."""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

import pytest

from lambdarec.config import REPO_ROOT, Settings

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

PASSWORD = "s3cret-value-0123456789abcdef"


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(state_dir=tmp_path, **values)


@pytest.fixture
def no_credentials_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LAMBDAREC_KAFKA_SASL_USERNAME",
        "LAMBDAREC_KAFKA_SASL_PASSWORD",
        "LAMBDAREC_KAFKA_SECURITY_PROTOCOL",
        "LAMBDAREC_KAFKA_SSL_CA_LOCATION",
        "LAMBDAREC_REDIS_PASSWORD",
        "LAMBDAREC_MILVUS_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)


pytestmark = pytest.mark.usefixtures("no_credentials_env")


def test_secrets_are_empty_by_default_and_never_in_a_repr(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    assert plain.kafka_sasl_username == ""
    for name in ("kafka_sasl_password", "redis_password", "milvus_token"):
        assert getattr(plain, name).get_secret_value() == "", name
    assert plain.mlflow_tracking_password.get_secret_value() == ""
    secret = _settings(
        tmp_path,
        kafka_sasl_password=PASSWORD,
        redis_password=PASSWORD,
        milvus_token=f"root:{PASSWORD}",
        mlflow_tracking_password=PASSWORD,
    )
    assert PASSWORD not in repr(secret)
    assert PASSWORD not in str(secret.model_dump())


def test_mlflow_credentials_are_mlflows_own_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One variable for both: MLflow's client reads MLFLOW_TRACKING_* itself, Settings too."""
    from mlflow.utils.credentials import get_default_host_creds

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    settings = _settings(tmp_path)
    assert settings.mlflow_tracking_username == "admin"
    assert settings.mlflow_tracking_password.get_secret_value() == PASSWORD
    creds = get_default_host_creds("http://mlflow:5000")
    assert (creds.username, creds.password) == ("admin", PASSWORD)


# -- Kafka -------------------------------------------------------------------------------------


def test_kafka_clients_add_nothing_without_a_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lambdarec.streaming import kafka

    made = _capture_kafka(monkeypatch)
    settings = _settings(tmp_path)
    assert kafka.security_config(settings) == {}
    kafka.make_producer(settings)
    kafka.make_consumer("g", ["t"], settings)
    kafka.admin_client(settings)
    for conf in made:
        assert not any(key.startswith(("sasl.", "security.")) for key in conf), conf


def test_kafka_clients_log_in_with_scram(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lambdarec.streaming import kafka

    made = _capture_kafka(monkeypatch)
    settings = _settings(tmp_path, kafka_sasl_username="lambdarec", kafka_sasl_password=PASSWORD)
    expected = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "lambdarec",
        "sasl.password": PASSWORD,
    }
    assert kafka.security_config(settings) == expected
    kafka.make_producer(settings)
    kafka.make_consumer("g", ["t"], settings)
    kafka.admin_client(settings)
    assert len(made) == 3
    for conf in made:
        assert expected.items() <= conf.items(), conf


def test_kafka_clients_trust_the_brokers_ca_over_tls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lambdarec.streaming import kafka

    made = _capture_kafka(monkeypatch)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    login = {"kafka_sasl_username": "lambdarec", "kafka_sasl_password": PASSWORD}
    settings = _settings(
        tmp_path, kafka_security_protocol="SASL_SSL", kafka_ssl_ca_location=str(ca), **login
    )
    kafka.make_producer(settings)
    kafka.admin_client(settings)
    for conf in made:
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["ssl.ca.location"] == str(ca)
    # without a CA file: the system's trust store (a public CA); over plaintext no ssl.* at all
    assert "ssl.ca.location" not in kafka.security_config(
        _settings(tmp_path, kafka_security_protocol="SASL_SSL", **login)
    )
    assert "ssl.ca.location" not in kafka.security_config(
        _settings(tmp_path, kafka_ssl_ca_location=str(ca), **login)
    )
    missing = _settings(
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_location=str(tmp_path / "missing.pem"),
        **login,
    )
    with pytest.raises(ValueError, match=r"missing\.pem is not a file: point it at"):
        kafka.security_config(missing)


def _capture_kafka(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import confluent_kafka
    import confluent_kafka.admin

    made: list[dict[str, Any]] = []

    class Client:
        def __init__(self, conf: dict[str, Any]) -> None:
            made.append(conf)

        def subscribe(self, topics: list[str]) -> None:
            pass

    for module, name in (
        (confluent_kafka, "Producer"),
        (confluent_kafka, "Consumer"),
        (confluent_kafka.admin, "AdminClient"),
    ):
        monkeypatch.setattr(module, name, Client)
    return made


# -- Feast's Redis -----------------------------------------------------------------------------


def test_feast_redis_without_a_password(tmp_path: Path) -> None:
    from lambdarec.features.store import render_feature_store_yaml

    text = render_feature_store_yaml(_settings(tmp_path, online_store="redis", redis_host="redis"))
    assert 'connection_string: "redis:6379,db=0"' in text
    assert "password" not in text


def test_feast_redis_password_is_a_reference_feast_expands(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    import yaml

    from lambdarec.features.store import REDIS_PASSWORD_ENV, render_feature_store_yaml

    settings = _settings(
        tmp_path, online_store="redis", redis_host="redis", redis_password=PASSWORD
    )
    text = render_feature_store_yaml(settings)
    assert PASSWORD not in text
    assert "password=${LAMBDAREC_REDIS_PASSWORD}" in text
    # What Feast's loader does with the file (feast.repo_config: os.path.expandvars).
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    online = yaml.safe_load(os.path.expandvars(text))["online_store"]
    assert online["connection_string"] == f"redis:6379,db=0,password={PASSWORD}"


# -- Milvus ------------------------------------------------------------------------------------


def test_milvus_token_reaches_the_server_client_only_when_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pymilvus

    from lambdarec.retrieval.index import IndexConfig, VectorIndex

    made: list[dict[str, Any]] = []

    class Client:
        def __init__(self, uri: str, **kwargs: Any) -> None:
            made.append(kwargs)

    monkeypatch.setattr(pymilvus, "MilvusClient", Client)
    uri = "http://milvus:19530"
    plain = IndexConfig.from_settings(_settings(tmp_path, milvus_uri=uri))
    VectorIndex(plain).client  # noqa: B018
    token = f"root:{PASSWORD}"
    config = IndexConfig.from_settings(_settings(tmp_path, milvus_uri=uri, milvus_token=token))
    VectorIndex(config).client  # noqa: B018
    assert "token" not in made[0]
    assert made[1]["token"] == token
    assert PASSWORD not in repr(config)


# -- the speed layer's Kafka connector ---------------------------------------------------------


@pytest.fixture(scope="module")
def speed_layer() -> ModuleType:
    path = REPO_ROOT / "include" / "flink" / "speed_layer.py"
    spec = importlib.util.spec_from_file_location("lambdarec_test_speed_layer", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_flink_connector_without_a_user(speed_layer: ModuleType) -> None:
    assert speed_layer.kafka_security_options({}) == ""
    ddl, _ = speed_layer.statements(speed_layer.parse_args([]))
    assert not any("sasl" in statement for statement in ddl)


def test_flink_connector_trusts_the_pem_ca_over_tls(speed_layer: ModuleType) -> None:
    env = {
        "LAMBDAREC_KAFKA_SASL_USERNAME": "lambdarec",
        "LAMBDAREC_KAFKA_SASL_PASSWORD": PASSWORD,
        "LAMBDAREC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LAMBDAREC_KAFKA_SSL_CA_LOCATION": "/data/state/certs/kafka-ca.pem",
    }
    options = speed_layer.kafka_security_options(env)
    assert "'properties.security.protocol' = 'SASL_SSL'" in options
    assert "'properties.ssl.truststore.type' = 'PEM'" in options
    assert "'properties.ssl.truststore.location' = '/data/state/certs/kafka-ca.pem'" in options
    plain = {**env, "LAMBDAREC_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    assert "truststore" not in speed_layer.kafka_security_options(plain)


def test_flink_connector_logs_in_with_the_shaded_scram_module(
    speed_layer: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAMBDAREC_KAFKA_SASL_USERNAME", "lambdarec")
    monkeypatch.setenv("LAMBDAREC_KAFKA_SASL_PASSWORD", PASSWORD)
    options = speed_layer.kafka_security_options()
    assert "'properties.security.protocol' = 'SASL_PLAINTEXT'" in options
    assert "'properties.sasl.mechanism' = 'SCRAM-SHA-512'" in options
    assert (
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule "
        f'required username="lambdarec" password="{PASSWORD}";' in options
    )
    ddl, _ = speed_layer.statements(speed_layer.parse_args([]))
    kafka_tables = [statement for statement in ddl if "'connector' = 'kafka'" in statement]
    assert kafka_tables
    assert all("sasl.jaas.config" in statement for statement in kafka_tables)
    assert speed_layer.main(["--print-sql"]) == 0
    printed = capsys.readouterr().out
    assert "sasl.jaas.config" in printed
    assert PASSWORD not in printed


def test_child_processes_get_the_secrets_not_their_mask(tmp_path: Path) -> None:
    """The local platform hands its settings to child processes as environment variables."""
    from lambdarec.platform.base import settings_env

    env = settings_env(
        _settings(
            tmp_path,
            kafka_sasl_password=PASSWORD,
            redis_password=PASSWORD,
            mlflow_tracking_username="admin",
            mlflow_tracking_password=PASSWORD,
        )
    )
    assert env["LAMBDAREC_KAFKA_SASL_PASSWORD"] == PASSWORD
    assert env["LAMBDAREC_REDIS_PASSWORD"] == PASSWORD
    assert env["LAMBDAREC_MILVUS_TOKEN"] == ""
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert env["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    assert "LAMBDAREC_MLFLOW_TRACKING_PASSWORD" not in env
    assert settings_env(_settings(tmp_path))["LAMBDAREC_KAFKA_SASL_PASSWORD"] == ""
    assert "MLFLOW_TRACKING_PASSWORD" not in settings_env(_settings(tmp_path))


def test_the_speed_layer_submission_carries_the_kafka_login_only_when_set(
    tmp_path: Path, speed_layer: ModuleType
) -> None:
    """`flink run` (the speed_layer DAG, the local platform) starts the job program with this
    environment only; the program builds its connector options from it."""
    from lambdarec.speed.job import speed_layer_env

    assert not any("SASL" in key for key in speed_layer_env(_settings(tmp_path)))
    env = speed_layer_env(
        _settings(tmp_path, kafka_sasl_username="lambdarec", kafka_sasl_password=PASSWORD)
    )
    assert env["LAMBDAREC_KAFKA_SASL_PASSWORD"] == PASSWORD
    assert f'password="{PASSWORD}"' in speed_layer.kafka_security_options(env)
