#!/usr/bin/env bash
# Builds the Java client: Maven generates Java from ../../protos (protoc + protoc-gen-grpc-java, both from
# Maven Central), compiles, and shades target/logmesh-client.jar. Skips Maven when the jar is newer than
# every input. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
jar=target/logmesh-client.jar
if [ -f "$jar" ] && [ -z "$(find ../../protos src pom.xml -newer "$jar" -type f | head -1)" ]; then
  echo "up to date: $PWD/$jar"; exit 0
fi
mvn -B -q ${MAVEN_ARGS:-} package -DskipTests
echo "built $PWD/$jar"
