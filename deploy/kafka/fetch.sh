#!/usr/bin/env bash
# Resolve the Apache Kafka broker jars (deploy/kafka/pom.xml) into $REPO/.cache/kafka/libs; no-op when up to date.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
LIBS="${LOGMESH_KAFKA_LIBS:-$REPO/.cache/kafka/libs}"
STAMP="$LIBS/.stamp"

die() { echo "kafka/fetch: $*" >&2; exit 1; }

# The stamp holds the pom's hash: any edit of pom.xml (e.g. kafka.version) re-resolves.
want="$(sha256sum "$POM" | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
  echo "kafka/fetch: $LIBS is up to date ($(find "$LIBS" -name '*.jar' | wc -l) jars)"
  exit 0
fi

command -v java >/dev/null || die "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ (apt-get install maven)"

echo "kafka/fetch: resolving $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -1) jars from Maven Central into $LIBS"
tmp="$LIBS.tmp.$$"
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
rm -rf "$tmp"
mkdir -p "$(dirname "$LIBS")"
if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
  sed 's/\x1b\[[0-9;]*m//g' "$tmp.log" | grep -E '^\[ERROR\] [^ ]' | head -1 >&2 || tail -20 "$tmp.log" >&2
  rm -f "$tmp.log"
  die "mvn could not resolve $POM (error above; is Maven Central reachable?)"
fi
rm -f "$tmp.log"
compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "resolution finished without kafka_2.13 jar in $tmp"
echo "$want" >"$tmp/.stamp"
# Swap in atomically so a broker never sees a half-copied classpath.
rm -rf "$LIBS.old"
[[ -d "$LIBS" ]] && mv "$LIBS" "$LIBS.old"
mv "$tmp" "$LIBS"
rm -rf "$LIBS.old"
echo "kafka/fetch: $(find "$LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$LIBS" | cut -f1) in $LIBS"
