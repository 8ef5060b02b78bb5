#!/usr/bin/env bash
# Starts an apache/kafka broker whose clients authenticate with SASL/SCRAM (docs/deployment.md,
# "Credentials"). The image's own run script formats the storage without SCRAM users, so this one
# does what it does (configure from the KAFKA_* variables, then launch) with two steps between:
# - the JAAS file of the broker (its inter-broker login) and the client properties of the
#   healthcheck (over TLS with the broker's trust store when it has one), written from
#   SCRAM_USERNAME / SCRAM_PASSWORD, readable by the broker only;
# - `kafka-storage format --add-scram` on the first start of an empty volume, which creates the
#   SCRAM user in the cluster's bootstrap metadata (KRaft has no ZooKeeper to create it in later).
# Later starts keep the formatted volume (--ignore-formatted): a new password is set with
# kafka-configs --alter --add-config 'SCRAM-SHA-512=[password=...]' --entity-type users.
# The variables are not named KAFKA_*: the image turns every KAFKA_* into a broker property.
set -euo pipefail

: "${SCRAM_USERNAME:?SCRAM_USERNAME is not set}"
: "${SCRAM_PASSWORD:?SCRAM_PASSWORD is not set}"
: "${CLUSTER_ID:?CLUSTER_ID is not set}"
case "$SCRAM_USERNAME$SCRAM_PASSWORD" in
  *'"'* | *\\*) echo "SCRAM_USERNAME and SCRAM_PASSWORD must not contain \" or \\" >&2; exit 1 ;;
esac

umask 077
config=/opt/kafka/config
login="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$SCRAM_USERNAME\" password=\"$SCRAM_PASSWORD\";"
mkdir -p "$config/sasl"
printf 'KafkaServer {\n  %s\n};\n' "$login" > "$config/sasl/kafka_server_jaas.conf"
# The healthcheck's client: over TLS when the broker has a trust store (the deployment's).
if [[ -n "${KAFKA_SSL_TRUSTSTORE_LOCATION:-}" ]]; then
  printf 'security.protocol=SASL_SSL\nssl.truststore.type=PEM\nssl.truststore.location=%s\n' \
    "$KAFKA_SSL_TRUSTSTORE_LOCATION" > "$config/sasl/client.properties"
else
  printf 'security.protocol=SASL_PLAINTEXT\n' > "$config/sasl/client.properties"
fi
printf 'sasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=%s\n' "$login" >> "$config/sasl/client.properties"
export KAFKA_OPTS="${KAFKA_OPTS:-} -Djava.security.auth.login.config=$config/sasl/kafka_server_jaas.conf"

# The image's run script, step by step (docker/resources/common-scripts/run in apache/kafka).
. /etc/kafka/docker/bash-config
. /etc/kafka/docker/configureDefaults
/etc/kafka/docker/configure
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" \
  --config "$config/server.properties" \
  --add-scram "SCRAM-SHA-512=[name=$SCRAM_USERNAME,password=$SCRAM_PASSWORD]"
exec /etc/kafka/docker/launch
