#!/usr/bin/env bash
# Creates logmesh's topics and grants each principal what it needs and nothing more (idempotent: run it at
# every deployment). As admin, against the SASL listener of broker.sh.
#
#   ingest  writes logmesh.logs (nothing else: it cannot forge results or touch the ledger)
#   stream  reads logmesh.logs; alone writes logmesh.scores, logmesh.anomalies, logmesh.dlq and
#           logmesh.sink-ledger, in transactions (transactional ids logmesh-stream-*); reads the ledger back
#   reader  reads logmesh.scores, logmesh.anomalies and logmesh.dlq (consumer groups logmesh-reader*)
#   scorer  the history host (deploy/k8s/history.yaml): reads logmesh.anomalies and logmesh.dlq; reads and
#           writes logmesh.feedback and logmesh.incidents (incidents in transactions, ids logmesh-incidents-*);
#           writes no result topic and not the ledger
# Nobody but admin may create, delete or reconfigure a topic (e.g. shorten the DLQ's retention).
#
# env: LOGMESH_KAFKA_BOOTSTRAP (kafka:9092), LOGMESH_KAFKA_SECRETS or LOGMESH_KAFKA_PASSWORD_ADMIN,
#      LOGMESH_KAFKA_CONF, LOGMESH_KAFKA_RUN (as broker.sh).
set -euo pipefail

BOOTSTRAP="${LOGMESH_KAFKA_BOOTSTRAP:-kafka:9092}"
SECRETS="${LOGMESH_KAFKA_SECRETS:-/run/secrets/logmesh-kafka}"
CONF="${LOGMESH_KAFKA_CONF:-/tmp/logmesh-kafka}"
read -r -a RUN <<<"${LOGMESH_KAFKA_RUN:-/opt/kafka/bin/kafka-run-class.sh}"

umask 077
mkdir -p "$CONF"
ADMIN="${LOGMESH_KAFKA_PASSWORD_ADMIN:-}"
if [[ -z "$ADMIN" ]]; then
  [[ -r "$SECRETS/admin" ]] || { echo "kafka-acls: error: no LOGMESH_KAFKA_PASSWORD_ADMIN and no $SECRETS/admin (make-secrets.sh)" >&2; exit 1; }
  ADMIN="$(tr -d '\r\n' <"$SECRETS/admin")"
fi
cat >"$CONF/admin-client.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN";
request.timeout.ms=15000
default.api.timeout.ms=30000
PROPS
admin=(--bootstrap-server "$BOOTSTRAP" --command-config "$CONF/admin-client.properties")

# name partitions configs
for spec in "logmesh.logs 4 -" "logmesh.scores 4 -" "logmesh.anomalies 1 -" "logmesh.dlq 1 retention.ms=604800000" \
            "logmesh.sink-ledger 1 cleanup.policy=compact" "logmesh.incidents 1 cleanup.policy=compact" \
            "logmesh.feedback 1 cleanup.policy=compact"; do
  read -r name parts configs <<<"$spec"
  extra=()
  [[ "$configs" == - ]] || extra=(--config "$configs")
  "${RUN[@]}" org.apache.kafka.tools.TopicCommand "${admin[@]}" --create --if-not-exists --topic "$name" \
    --partitions "$parts" --replication-factor 1 "${extra[@]}" >/dev/null
done

acl() { "${RUN[@]}" org.apache.kafka.tools.AclCommand "${admin[@]}" --add --force "$@" >/dev/null; }
acl --allow-principal User:ingest --operation Write --operation Describe --topic logmesh.logs
acl --allow-principal User:stream --operation Read --operation Describe --topic logmesh.logs --topic logmesh.sink-ledger
acl --allow-principal User:stream --operation Write --operation Describe \
  --topic logmesh.scores --topic logmesh.anomalies --topic logmesh.dlq --topic logmesh.sink-ledger
acl --allow-principal User:stream --operation Write --operation Describe \
  --resource-pattern-type prefixed --transactional-id logmesh-stream-
# Spark's Kafka source and the ledger reader name their own groups (random suffixes)
acl --allow-principal User:stream --operation Read --resource-pattern-type prefixed \
  --group spark-kafka-source- --group logmesh-ledger-
acl --allow-principal User:reader --operation Read --operation Describe \
  --topic logmesh.scores --topic logmesh.anomalies --topic logmesh.dlq
acl --allow-principal User:reader --operation Read --resource-pattern-type prefixed --group logmesh-reader
acl --allow-principal User:scorer --operation Read --operation Describe --topic logmesh.anomalies --topic logmesh.dlq
acl --allow-principal User:scorer --operation Read --operation Write --operation Describe \
  --topic logmesh.feedback --topic logmesh.incidents
acl --allow-principal User:scorer --operation Write --operation Describe \
  --resource-pattern-type prefixed --transactional-id logmesh-incidents-
# its readers assign partitions and commit nothing, but name a group each (random suffixes)
acl --allow-principal User:scorer --operation Read --resource-pattern-type prefixed \
  --group logmesh-history- --group logmesh-incidents- --group logmesh-feedback- --group logmesh-scorer-
echo "kafka-acls: topics and ACLs in place on $BOOTSTRAP"
