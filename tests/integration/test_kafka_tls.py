"""The deployment's Kafka login, on a real broker (#21): SASL/SCRAM-SHA-512 over TLS with the
certificates `python -m lambdarec.certs issue` writes, the broker configured with the same
properties docker-compose.yml hands the apache/kafka image (listener BROKER mapped to SASL_SSL,
PEM key and trust stores, the SCRAM user created at format time), and the project's own clients
(security_config) producing and consuming through it. A plaintext client, a wrong password and a
client that does not trust the CA are refused. The broker is Apache Kafka from the project's
Maven Central jars, on loopback with free ports."""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from lambdarec.certs import issue
from lambdarec.config import get_settings
from lambdarec.deploy import generate_secrets, load_compose, service_environment
from lambdarec.harness.platform import private_settings
from lambdarec.platform.kafka import broker_properties, kafka_cluster_id, resolve_kafka_jars
from lambdarec.streaming.kafka import admin_client, make_consumer, make_producer, security_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from lambdarec.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "lambdarec"


def _broker_properties(settings: Settings, certs: Path) -> str:
    """The local platform's broker with the security of docker-compose.yml's `kafka` service."""
    compose = service_environment(load_compose(generate_secrets()), "kafka")
    host, port, controller = settings.bind_host, settings.kafka_port, settings.kafka_controller_port
    props = broker_properties(settings)
    props.update(
        {
            "listeners": f"BROKER://{host}:{port},CONTROLLER://{host}:{controller}",
            "advertised.listeners": f"BROKER://{host}:{port}",
            "inter.broker.listener.name": compose["KAFKA_INTER_BROKER_LISTENER_NAME"],
            "listener.security.protocol.map": compose["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"],
            "sasl.enabled.mechanisms": compose["KAFKA_SASL_ENABLED_MECHANISMS"],
            "sasl.mechanism.inter.broker.protocol": compose[
                "KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"
            ],
            "ssl.keystore.type": compose["KAFKA_SSL_KEYSTORE_TYPE"],
            "ssl.keystore.location": str(certs / "broker.pem"),
            "ssl.truststore.type": compose["KAFKA_SSL_TRUSTSTORE_TYPE"],
            "ssl.truststore.location": str(certs / "ca.pem"),
        }
    )
    return "".join(f"{key}={value}\n" for key, value in props.items())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("kafka-tls")
    certs = home / "certs"
    issue(certs, ["kafka", "127.0.0.1", "localhost"])
    local = private_settings(home)  # free ports, state (the log dir) under home
    config = home / "server.properties"
    config.write_text(_broker_properties(local, certs))
    password = generate_secrets()["KAFKA_SASL_PASSWORD"]
    login = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{USER}" password="{password}";'
    )
    jaas = home / "jaas.conf"
    jaas.write_text(f"KafkaServer {{\n  {login}\n}};\n")
    shared = get_settings()
    libs = resolve_kafka_jars(shared)
    java = str(shared.java_home / "bin" / "java")
    # as run-with-scram.sh does: the SCRAM user is created when the storage is formatted
    formatted = subprocess.run(
        [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(),
         "-c", str(config), "--add-scram", f"SCRAM-SHA-512=[name={USER},password={password}]"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    log = (home / "broker.log").open("w")
    broker = subprocess.Popen(
        [java, "-Xmx512m", f"-Djava.security.auth.login.config={jaas}", "-cp", f"{libs}/*",
         "kafka.Kafka", str(config)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    settings = local.model_copy(
        update=dict(
            kafka_bootstrap=f"{local.bind_host}:{local.kafka_port}",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username=USER,
            kafka_sasl_password=SecretStr(password),
            kafka_ssl_ca_location=str(certs / "ca.pem"),
        )
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                admin_client(settings).list_topics(timeout=5)
                break
            except Exception:
                if broker.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (home / "broker.log").read_text()[-3000:]
                    pytest.fail(f"the SASL_SSL broker did not answer:\n{tail}")
                time.sleep(1)
        yield settings
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        log.close()


def _create_topic(settings: Settings, name: str) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(settings)  # kept alive until the future resolves
    futures = admin.create_topics([NewTopic(name, 1, 1)])
    futures[name].result(timeout=30)


def test_project_clients_produce_and_consume_over_sasl_ssl(tls_broker: Settings) -> None:
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    _create_topic(tls_broker, topic)
    producer = make_producer(tls_broker)
    for i in range(20):
        producer.produce(topic, key=str(i).encode(), value=f"event-{i}".encode())
    assert producer.flush(30) == 0
    consumer = make_consumer(f"g-{topic}", [topic], tls_broker)
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 20 and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                seen.append(message.value())
    finally:
        consumer.close()
    assert sorted(seen) == sorted(f"event-{i}".encode() for i in range(20))


def _refused(settings: Settings, **conf: object) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": settings.bootstrap_servers, **conf})
    with pytest.raises(KafkaException):
        client.list_topics(timeout=8)


def test_a_wrong_password_is_refused(tls_broker: Settings) -> None:
    conf = security_config(tls_broker)
    _refused(tls_broker, **{**conf, "sasl.password": "x" * 32})


def test_a_plaintext_client_is_refused(tls_broker: Settings) -> None:
    conf = security_config(tls_broker)
    plain = {k: v for k, v in conf.items() if not k.startswith("ssl.")}
    _refused(tls_broker, **{**plain, "security.protocol": "SASL_PLAINTEXT"})


def test_a_client_that_does_not_trust_the_ca_is_refused(
    tls_broker: Settings, tmp_path: Path
) -> None:
    other = issue(tmp_path / "other", ["kafka", "127.0.0.1"])
    conf = {**security_config(tls_broker), "ssl.ca.location": str(other.ca)}
    _refused(tls_broker, **conf)


def test_a_missing_ca_file_is_named(tls_broker: Settings, tmp_path: Path) -> None:
    missing = tls_broker.model_copy(update={"kafka_ssl_ca_location": str(tmp_path / "no.pem")})
    with pytest.raises(ValueError, match="LAMBDAREC_KAFKA_SSL_CA_LOCATION=.*is not a file"):
        security_config(missing)


def test_the_platform_reads_the_cluster_up_with_its_login_and_unreachable_without(
    tls_broker: Settings,
) -> None:
    """The broker is the settings' cluster (LAMBDAREC_KAFKA_BOOTSTRAP): the platform starts no
    broker beside it, and its status row asks the cluster with the project's SASL login."""
    from lambdarec.platform import manager

    [row] = manager.status(["kafka"], settings=tls_broker)
    assert (row.state, row.url) == ("up", tls_broker.kafka_bootstrap)
    anonymous = tls_broker.model_copy(update={"kafka_sasl_username": ""})
    [row] = manager.status(["kafka"], settings=anonymous)
    assert row.state == "unreachable"
