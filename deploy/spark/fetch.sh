#!/usr/bin/env bash
# Resolve Spark's Kafka connector for the .venv pyspark into $REPO/.cache/spark-jars and write jars.txt for spark.jars.
#
# Only jars that pyspark's own jars/ dir lacks are kept (Spark already ships slf4j, lz4, snappy,
# zstd, jsr305, spark-tags, ...). Re-resolves when pom.xml, the pyspark version or its jar set
# changes; otherwise a no-op. env: LOGMESH_PYTHON (python with pyspark; default $REPO/.venv/bin/python),
# LOGMESH_SPARK_JARS_DIR (default $REPO/.cache/spark-jars), LOGMESH_SPARK_CONNECTOR_VERSION (force one).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
OUT="${LOGMESH_SPARK_JARS_DIR:-$REPO/.cache/spark-jars}"
PY="${LOGMESH_PYTHON:-$REPO/.venv/bin/python}"
GA_PATH="org/apache/spark/spark-sql-kafka-0-10_2.13"
GA="org.apache.spark:spark-sql-kafka-0-10_2.13"
STAMP="$OUT/.stamp"

say() { echo "spark/fetch: $*"; }
die() { echo "spark/fetch: error: $*" >&2; exit 1; }

[[ -x "$PY" ]] || die "no python at $PY: create the venv first (make venv) or set LOGMESH_PYTHON"
info="$("$PY" -c 'import os, pyspark; print(pyspark.__version__); print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))' 2>/dev/null)" ||
  die "pyspark is not importable from $PY: install it (make venv) first; the connector must match its version and jars"
PYSPARK_VERSION="$(sed -n 1p <<<"$info")"
SHIPPED="$(sed -n 2p <<<"$info")"
[[ -d "$SHIPPED" ]] || die "pyspark has no jars dir at $SHIPPED"

want="$( { cat "$POM"; echo "pyspark=$PYSPARK_VERSION forced=${LOGMESH_SPARK_CONNECTOR_VERSION:-}"; ls "$SHIPPED"; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -s "$OUT/jars.txt" ]]; then
  say "$OUT is up to date ($(tr ',' '\n' <"$OUT/jars.txt" | wc -l) jars, pyspark $PYSPARK_VERSION)"
  exit 0
fi

command -v java >/dev/null || die "java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found: install Maven 3.8+ (apt-get install maven)"

# Local Maven repository (where the connector's maven-metadata lands), honouring -Dmaven.repo.local.
M2="$HOME/.m2/repository"
if [[ "${MAVEN_OPTS:-}" =~ -Dmaven\.repo\.local=([^[:space:]]+) ]]; then M2="${BASH_REMATCH[1]}"; fi

MVN=(mvn -q -B -U -Dstyle.color=never -f "$POM")
tmp="$OUT.tmp.$$"
trap 'rm -rf "$tmp" "$tmp.all" "$tmp.log"' EXIT
rm -rf "$tmp" "$tmp.all"
mkdir -p "$tmp" "$(dirname "$OUT")"

# Candidate connector versions, best first: pyspark's own, then the served releases of the same
# major version below it, newest first (from the artifact's maven-metadata; at most 5).
candidates() {
  local v="$PYSPARK_VERSION"
  echo "$v"
  # Any metadata-driven request downloads maven-metadata-*.xml; its own outcome does not matter.
  "${MVN[@]}" dependency:get -Dartifact="$GA:RELEASE:pom" -Dtransitive=false >/dev/null 2>&1 || true
  cat "$M2/$GA_PATH"/maven-metadata*.xml 2>/dev/null |
    sed -n 's:.*<version>\([0-9][0-9.]*\)</version>.*:\1:p' | grep -E "^${v%%.*}\.[0-9]+\.[0-9]+$" |
    { cat; echo "$v"; } | sort -uV | awk -v v="$v" '$0 == v { exit } { print }' | tac | head -5
}

# Resolve one version (connector + runtime dependencies) into $tmp.all.
resolve() {
  rm -rf "$tmp.all"
  "${MVN[@]}" dependency:copy-dependencies -Dspark.connector.version="$1" \
    -DincludeScope=runtime -DoutputDirectory="$tmp.all" >"$tmp.log" 2>&1
}

VERSION=""
if [[ -n "${LOGMESH_SPARK_CONNECTOR_VERSION:-}" ]]; then
  resolve "$LOGMESH_SPARK_CONNECTOR_VERSION" && VERSION="$LOGMESH_SPARK_CONNECTOR_VERSION"
else
  # The Maven Central reached here may serve a version's connector jar but not all of its
  # dependencies (seen: 4.1.3's spark-token-provider), so a version counts only if it resolves whole.
  for v in $(candidates); do
    say "resolving $GA:$v"
    if resolve "$v"; then VERSION="$v"; break; fi
    echo "spark/fetch: NOTE: $GA:$v is not on Maven Central (or not with all its dependencies): $(grep -m1 -oE '(Could not (find|transfer) artifact|Failed to read artifact descriptor for) [^ ]+|[^ ]+ was not found in' "$tmp.log" | head -1 || true)" >&2
  done
fi
if [[ -z "$VERSION" ]]; then
  sed 's/\x1b\[[0-9;]*m//g' "$tmp.log" | grep -E '^\[ERROR\] [^ ]' | head -1 >&2 || true
  die "could not resolve $GA for pyspark $PYSPARK_VERSION (errors above; force one with LOGMESH_SPARK_CONNECTOR_VERSION)"
fi
[[ "$VERSION" == "$PYSPARK_VERSION" ]] ||
  echo "spark/fetch: NOTE: using connector $VERSION with pyspark $PYSPARK_VERSION (nearest served; see deploy/spark/pom.xml)" >&2

# Keep a jar only if pyspark's jars dir has no jar of the same artifact (any version).
"$PY" - "$tmp.all" "$SHIPPED" "$tmp" <<'EOF'
import os, re, shutil, sys
src, shipped, dst = sys.argv[1:4]
ver = re.compile(r"^(.*?)-(\d+(?:\.\d+)+(?:[-.][0-9A-Za-z]+)*)\.jar$")
def artifact(name):
    m = ver.match(name)
    return m.group(1) if m else name[:-4]
have = {artifact(n) for n in os.listdir(shipped) if n.endswith(".jar")}
kept, dropped = [], []
for n in sorted(os.listdir(src)):
    if not n.endswith(".jar"):
        continue
    (dropped if artifact(n) in have else kept).append(n)
    if artifact(n) not in have:
        shutil.copy2(os.path.join(src, n), os.path.join(dst, n))
print("spark/fetch: kept    " + " ".join(kept))
print("spark/fetch: dropped " + " ".join(dropped) + "  (pyspark ships them)")
EOF
compgen -G "$tmp/spark-sql-kafka-0-10_2.13-*.jar" >/dev/null || die "connector jar missing after resolution"

rm -rf "$OUT.old"
[[ -d "$OUT" ]] && mv "$OUT" "$OUT.old"
mv "$tmp" "$OUT"
rm -rf "$OUT.old"
find "$OUT" -name '*.jar' | sort | paste -sd, - >"$OUT/jars.txt"
echo "$want" >"$STAMP"
say "$(tr ',' '\n' <"$OUT/jars.txt" | wc -l) jars in $OUT; spark.jars list in $OUT/jars.txt"
