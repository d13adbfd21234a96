#!/usr/bin/env bash
# Writes one random password per Kafka principal (admin ingest stream reader scorer) into DIR, and two client files
# per principal: DIR/<name>.properties for librdkafka (kcat -F; its lines are `logmesh ingest/stream
# --kafka-option`s) and DIR/<name>-java.properties for Java clients (kafka-console-consumer
# --consumer.config, Kafka's CLI tools); kafka.env, stream.env and scorer.env for compose's env_file. All readable by
# their owner only; existing passwords and client files are kept (kafka.env is rewritten from them, so a
# principal added later gets its line).
#
#   deploy/k8s/kafka/make-secrets.sh var/kafka-secrets
#   kubectl create secret generic logmesh-kafka-users --from-file=var/kafka-secrets   # Kubernetes
set -euo pipefail
DIR="${1:?usage: make-secrets.sh DIR}"
umask 077  # every file below: owner only
mkdir -p "$DIR"
chmod 700 "$DIR"
USERS=(admin ingest stream reader scorer)
for user in "${USERS[@]}"; do
  [[ -s "$DIR/$user" ]] || openssl rand -hex 24 >"$DIR/$user"
  [[ -s "$DIR/$user.properties" ]] || cat >"$DIR/$user.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.username=$user
sasl.password=$(cat "$DIR/$user")
PROPS
  [[ -s "$DIR/$user-java.properties" ]] || cat >"$DIR/$user-java.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$user" password="$(cat "$DIR/$user")";
PROPS
done
# for compose (env_file, read by the compose CLI as you, so containers need no access to these files)
for user in "${USERS[@]}"; do
  echo "LOGMESH_KAFKA_PASSWORD_${user^^}=$(cat "$DIR/$user")"
done >"$DIR/kafka.env"
# one principal's password each, for the job (stream.env) and the history host (scorer.env)
for user in stream scorer; do
  [[ -s "$DIR/$user.env" ]] || echo "LOGMESH_KAFKA_PASSWORD=$(cat "$DIR/$user")" >"$DIR/$user.env"
done
echo "make-secrets: passwords and client files for ${USERS[*]} in $DIR (mode 600)"
