"""The multi-service deployment: the compose file is valid for docker compose, every project
container is pointed at service names (never a loopback default), and the images pin the same
versions as the locks."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from lambdarec.config import REPO_ROOT
from lambdarec.deploy import (
    SECRETS,
    ComposeError,
    check_secrets,
    compose_settings,
    generate_secrets,
    init_env,
    interpolate,
    load_compose,
    main,
    read_env_file,
    secret_problems,
    service_environment,
    service_settings,
    settings_table,
)

if TYPE_CHECKING:
    from pathlib import Path

    from lambdarec.config import Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"
OVERRIDE = REPO_ROOT / "docker-compose.override.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
#: What an operator's .env holds beyond .env.example: every secret filled.
REAL = generate_secrets()
#: Services that must run project code with the project's endpoints.
EXPECTED = {
    "lambdarec-init",
    "feature-pusher",
    "speed-layer",
    "attribution",
    "flink-jobmanager",
    "flink-taskmanager",
    "spark-master",
    "spark-worker",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "serving",
}


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail(
            "the docker CLI is not installed; `docker compose config` validates the compose "
            "file without an engine: install the docker CLI and the compose plugin "
            "(docker/install-compose-plugin.sh)"
        )
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.fail(
            "the docker CLI has no compose plugin (`docker compose version` failed: "
            f"{(probe.stdout + probe.stderr).strip()[:200]}); install it with "
            "docker/install-compose-plugin.sh"
        )
    done = subprocess.run(
        [docker, "compose", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done


def test_compose_config_refuses_the_example_env_file() -> None:
    """.env.example leaves every secret empty: compose stops before anything starts."""
    done = _compose("-f", "docker-compose.yml", "--env-file", ".env.example", "config", "-q")
    assert done.returncode != 0
    assert re.search(r"required variable (\w+) is missing a value: set \1 in \.env", done.stderr)


def test_compose_config_is_valid(tmp_path: Path) -> None:
    real = _env_file(tmp_path, REAL)
    done = _compose("-f", "docker-compose.yml", "--env-file", str(real), "config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_config_with_override_and_cluster_profile_is_valid(tmp_path: Path) -> None:
    done = _compose(
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.override.yml",
        "--env-file",
        str(_env_file(tmp_path, REAL)),
        "--profile",
        "kafka-cluster",
        "config",
        "-q",
    )
    assert done.returncode == 0, done.stderr


def test_compose_stops_on_a_missing_secret(tmp_path: Path) -> None:
    real = _env_file(tmp_path, REAL)
    lines = [ln for ln in real.read_text().splitlines() if not ln.startswith("POSTGRES_PASSWORD=")]
    no_secret = tmp_path / "no-secret.env"
    no_secret.write_text("\n".join(lines) + "\n")
    done = _compose("-f", "docker-compose.yml", "--env-file", str(no_secret), "config", "-q")
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def _assert_cluster(name: str, s: Settings) -> None:
    assert s.bootstrap_servers == "kafka:9092", name
    assert s.redis_host == "redis", name
    assert s.online_store == "redis", name
    assert s.mlflow_uri == "http://mlflow:5000", name
    assert s.milvus_uri == "http://milvus:19530", name
    assert s.spark_master == "spark://spark-master:7077", name
    assert s.flink_jobmanager == "flink-jobmanager:8081", name
    for endpoint in (s.bootstrap_servers, s.redis_host, s.mlflow_uri, s.milvus_uri, s.spark_master):
        assert not any(host in endpoint for host in LOOPBACK), (name, endpoint)


def test_every_project_service_points_at_service_names() -> None:
    rendered = service_settings(REAL)
    assert set(rendered) >= EXPECTED, EXPECTED - set(rendered)
    for name, settings in rendered.items():
        _assert_cluster(name, settings)
        assert str(settings.state_dir) == "/data/state", name


def test_the_override_keeps_the_endpoints() -> None:
    """The development override publishes ports and mounts sources; endpoints stay the same."""
    import yaml

    override = yaml.safe_load(OVERRIDE.read_text())
    for name, spec in override["services"].items():
        env = spec.get("environment") or {}
        assert not any(str(key).startswith("LAMBDAREC_") for key in env), name
        for port in spec.get("ports", []):
            assert port.startswith("${PUBLISH_HOST:-127.0.0.1}:"), (name, port)


def test_a_managed_service_is_one_variable() -> None:
    rendered = service_settings({**REAL, "STACK_KAFKA_BOOTSTRAP": "b-1.msk:9092,b-2.msk:9092"})
    assert {s.bootstrap_servers for s in rendered.values()} == {"b-1.msk:9092,b-2.msk:9092"}


def test_rendering_ignores_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDAREC_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("LAMBDAREC_REDIS_DB", "7")
    settings = compose_settings({"LAMBDAREC_REDIS_HOST": "redis"})
    assert settings.redis_host == "redis"
    assert settings.redis_db == 0


def test_compose_settings_rejects_unknown_variables() -> None:
    with pytest.raises(ComposeError, match="LAMBDAREC_KAFKA_BOOTSTRAP_SERVERS"):
        compose_settings({"LAMBDAREC_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"})


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A}:${B:-2}", {"A": "h", "B": "1"}, "h:1"),
        ("$$HOSTNAME", {}, "$HOSTNAME"),
        ("$A/b", {"A": "a"}, "a/b"),
    ],
)
def test_interpolate(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_interpolate_required() -> None:
    with pytest.raises(ComposeError, match="SECRET"):
        interpolate("${SECRET:?set SECRET in .env}", {})


def test_env_example_covers_every_variable_and_holds_no_real_secret() -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    used |= set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", OVERRIDE.read_text()))
    example = read_env_file(ENV_EXAMPLE)
    assert used <= set(example), sorted(used - set(example))
    for key, value in example.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "FERNET", "ROOT_USER", "CLUSTER")):
            assert value == "", key
    assert {key for key, value in example.items() if value == ""} == set(SECRETS)


def test_no_secret_literal_in_the_compose_file() -> None:
    compose = load_compose(REAL)
    for name, spec in compose["services"].items():
        env = spec.get("environment") or {}
        for key in env:
            if re.search(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|CLUSTER_ID)$", key):
                raw = COMPOSE.read_text()
                assert re.search(rf"{key}: \$\{{[A-Z_]+:\?", raw), (name, key)


def _pin(lock: str, package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==([^\s;]+)", lock, re.MULTILINE)
    assert match, f"{package} is not pinned"
    return match.group(1)


def test_project_image_matches_requirements() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    lock = (REPO_ROOT / "requirements.txt").read_text()
    airflow = _pin(lock, "apache-airflow")
    assert f"apache/airflow:{airflow}-python3.11" in dockerfile
    assert f'"apache-airflow=={airflow}"' in dockerfile
    assert "requirements.txt" in dockerfile
    assert _pin(lock, "gunicorn")


def test_flink_image_matches_the_flink_lock() -> None:
    dockerfile = (REPO_ROOT / "include" / "flink" / "Dockerfile").read_text()
    lock = (REPO_ROOT / "env" / "requirements-flink.txt").read_text()
    pom = (REPO_ROOT / "env" / "flink" / "pom.xml").read_text()
    pyflink = _pin(lock, "apache-flink")
    base = re.search(r"FLINK_IMAGE=flink:(\d+\.\d+(?:\.\d+)?)", dockerfile)
    assert base, "the Flink base image tag is not pinned"
    assert pyflink.startswith(base.group(1)), (pyflink, base.group(1))
    connector = re.search(r"<kafka.connector.version>([^<]+)<", pom)
    assert connector and connector.group(1).endswith("-" + ".".join(pyflink.split(".")[:2]))
    assert "env/requirements-flink.txt" in dockerfile
    assert "env/flink/pom.xml" in dockerfile


def test_kafka_image_matches_the_broker_pom() -> None:
    pom = (REPO_ROOT / "env" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)<", pom)
    assert version
    assert f"apache/kafka:${{KAFKA_VERSION:-{version.group(1)}}}" in COMPOSE.read_text()
    assert read_env_file(ENV_EXAMPLE)["KAFKA_VERSION"] == version.group(1)


def test_deployment_doc_lists_every_setting() -> None:
    doc = (REPO_ROOT / "docs" / "deployment.md").read_text()
    for line in settings_table().splitlines()[2:]:
        variable = line.split("`")[1]
        assert variable in doc, variable


# -- credentials (#21) ---------------------------------------------------------------------------


def _env_file(tmp_path: Path, values: dict[str, str]) -> Path:
    merged = {**read_env_file(ENV_EXAMPLE), **values}
    path = tmp_path / "real.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in merged.items()))
    return path


def test_the_check_refuses_placeholders_naming_each() -> None:
    """Compose catches empty secrets only; the secrets-check service, run before every backend
    with a credential, refuses a change-me placeholder typed by hand as well."""
    placeholders = {name: "change-me" for name in SECRETS}
    env = service_environment(load_compose(placeholders), "secrets-check")
    assert set(env) == set(SECRETS)
    problems = secret_problems(env)
    assert [line.split()[0] for line in problems] == list(SECRETS)
    with pytest.raises(ComposeError) as error:
        check_secrets(env)
    for name in SECRETS:
        assert name in str(error.value)
    assert "change-me" in str(error.value)


def test_the_check_refuses_empty_and_short_secrets_naming_each() -> None:
    env = {**generate_secrets(), "REDIS_PASSWORD": "", "MILVUS_ROOT_PASSWORD": "short"}
    assert secret_problems(env) == [
        "REDIS_PASSWORD is empty",
        "MILVUS_ROOT_PASSWORD is 5 characters, shorter than 16",
    ]


def test_generated_secrets_pass_compose_and_the_check(tmp_path: Path) -> None:
    real = _env_file(tmp_path, generate_secrets())
    done = _compose("-f", "docker-compose.yml", "--env-file", str(real), "config", "-q")
    assert done.returncode == 0, done.stderr
    env = service_environment(load_compose(env_file=real), "secrets-check")
    check_secrets(env)
    assert main(["check-secrets", "--env-file", str(real)]) == 0
    assert main(["check-secrets", "--env-file", str(ENV_EXAMPLE)]) == 1


def test_init_env_fills_every_secret_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / ".env"
    assert main(["init-env", "--output", str(target)]) == 0
    assert "15 secrets generated" in capsys.readouterr().out
    assert target.stat().st_mode & 0o777 == 0o600
    written, example = read_env_file(target), read_env_file(ENV_EXAMPLE)
    assert set(written) == set(example)
    assert secret_problems(written) == []
    for key, value in example.items():
        if key not in SECRETS:
            assert written[key] == value, key
    done = _compose("-f", "docker-compose.yml", "--env-file", str(target), "config", "-q")
    assert done.returncode == 0, done.stderr
    assert main(["init-env", "--output", str(target)]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err
    with pytest.raises(ComposeError, match="exists"):
        init_env(target)


def test_settings_command_needs_an_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["settings", "--env-file", str(tmp_path / "missing.env")]) == 1
    assert "cp .env.example .env" in capsys.readouterr().err
    assert main(["settings", "--env-file", str(_env_file(tmp_path, REAL))]) == 0
    assert "kafka=kafka:9092" in capsys.readouterr().out


@pytest.mark.parametrize(
    "secret",
    [
        "KAFKA_SASL_PASSWORD",
        "REDIS_PASSWORD",
        "MILVUS_ROOT_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SECRET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
    ],
)
def test_compose_stops_on_an_empty_credential(tmp_path: Path, secret: str) -> None:
    env = _env_file(tmp_path, {**generate_secrets(), secret: ""})
    done = _compose("-f", "docker-compose.yml", "--env-file", str(env), "config", "-q")
    assert done.returncode != 0
    assert secret in done.stderr


def _depends(compose: dict[str, object], service: str) -> set[str]:
    """Every service ``service`` waits for, directly or through others."""
    services = compose["services"]
    assert isinstance(services, dict)
    seen: set[str] = set()
    todo = [service]
    while todo:
        spec = services[todo.pop()]
        for name in spec.get("depends_on") or {}:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_every_backend_asks_for_a_credential() -> None:
    compose = load_compose(REAL)
    services = compose["services"]

    redis = services["redis"]
    assert "requirepass" in " ".join(redis["command"])
    assert service_environment(compose, "redis")["REDISCLI_AUTH"] == REAL["REDIS_PASSWORD"]

    for name in ("kafka", "kafka-2", "kafka-3"):
        kafka = service_environment(compose, name)
        assert kafka["SCRAM_PASSWORD"] == REAL["KAFKA_SASL_PASSWORD"], name
        assert kafka["KAFKA_ADVERTISED_LISTENERS"] == f"BROKER://{name}:9092", name
        # every listener but the controller's (unpublished) is SASL over TLS; the image's
        # configure script demands JKS stores when an advertised listener's name holds "SSL"
        assert kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] == (
            "CONTROLLER:PLAINTEXT,BROKER:SASL_SSL"
        ), name
        assert "SSL" not in kafka["KAFKA_ADVERTISED_LISTENERS"], name
        assert kafka["KAFKA_SSL_KEYSTORE_LOCATION"] == "/etc/kafka/certs/broker.pem", name
        assert "kafka-certs:/etc/kafka/certs:ro" in services[name]["volumes"], name
        assert "certs-init" in _depends(compose, name), name
        assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512", name
        assert "--command-config" in services[name]["healthcheck"]["test"][1], name

    mlflow = service_environment(compose, "mlflow")
    assert "--app-name basic-auth" in " ".join(services["mlflow"]["command"])
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == REAL["MLFLOW_ADMIN_PASSWORD"]
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == REAL["MLFLOW_FLASK_SECRET_KEY"]

    milvus = service_environment(compose, "milvus")
    assert milvus["COMMON_SECURITY_AUTHORIZATIONENABLED"] == "true"
    assert milvus["COMMON_SECURITY_DEFAULTROOTPASSWORD"] == REAL["MILVUS_ROOT_PASSWORD"]

    for name in ("airflow-api-server", "airflow-scheduler", "airflow-init"):
        airflow = service_environment(compose, name)
        assert airflow["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".FabAuthManager"), name
        assert not any("SIMPLE_AUTH_MANAGER" in key for key in airflow), name
    # the admin's password reaches airflow-init through its environment, not its command line
    assert "lambdarec.deploy airflow-admin" in " ".join(services["airflow-init"]["command"])
    admin = service_environment(compose, "airflow-init")["AIRFLOW_ADMIN_PASSWORD"]
    assert admin == REAL["AIRFLOW_ADMIN_PASSWORD"]
    assert admin not in " ".join(services["airflow-init"]["command"])


def test_every_service_with_a_credential_waits_for_the_check() -> None:
    compose = load_compose(REAL)
    for name in compose["services"]:
        if name == "secrets-check" or name in ("etcd", "spark-master"):
            continue  # etcd and the Spark master hold no credential
        assert "secrets-check" in _depends(compose, name), name


def test_flink_and_spark_publish_no_port() -> None:
    """They have no authentication in open source: internal network only."""
    compose = load_compose(REAL)
    for name in ("flink-jobmanager", "flink-taskmanager", "spark-master", "spark-worker"):
        assert not compose["services"][name].get("ports"), name


def test_the_brokers_certificate_names_every_broker() -> None:
    compose = load_compose(REAL)
    command = compose["services"]["certs-init"]["command"]
    hosts = next(arg for arg in command if arg.startswith("--hosts=")).split("=", 1)[1]
    brokers = [name for name in compose["services"] if re.fullmatch(r"kafka(-\d)?", name)]
    assert set(brokers) <= set(hosts.split(",")), (brokers, hosts)
    copy = next(arg for arg in command if arg.startswith("--ca-copy=")).split("=", 1)[1]
    for name, settings in service_settings(REAL).items():
        assert settings.kafka_security_protocol == "SASL_SSL", name
        assert settings.kafka_ssl_ca_location == copy, name
        assert copy.startswith(str(settings.state_dir) + "/"), name  # in the volume they mount


def test_every_project_service_gets_the_credentials() -> None:
    real = REAL
    for name, settings in service_settings(real).items():
        assert settings.kafka_sasl_username == "lambdarec", name
        assert settings.kafka_sasl_password.get_secret_value() == real["KAFKA_SASL_PASSWORD"]
        assert settings.redis_password.get_secret_value() == real["REDIS_PASSWORD"], name
        assert settings.milvus_token.get_secret_value() == f"root:{real['MILVUS_ROOT_PASSWORD']}"
        assert settings.mlflow_tracking_username == "admin", name
        assert settings.mlflow_tracking_password.get_secret_value() == real["MLFLOW_ADMIN_PASSWORD"]


def test_the_check_refuses_what_the_config_files_cannot_quote() -> None:
    env = {**generate_secrets(), "KAFKA_SASL_PASSWORD": 'abc"def0123456789abc'}
    assert secret_problems(env) == ["KAFKA_SASL_PASSWORD holds a quote, a backslash or a space"]
