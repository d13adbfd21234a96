#!/usr/bin/env bash
# Builds the Node client: npm ci (pinned by package-lock.json), static TypeScript from ../../protos with
# ts-proto through buf (local plugin), tsc to dist/. Idempotent; quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
BUF=${BUF:-$ROOT/.cache/buf/node_modules/.bin/buf}
[ -x "$BUF" ] || BUF=$(command -v buf || true)
[ -n "$BUF" ] || { echo "buf not found: run 'make tools' in $ROOT" >&2; exit 1; }
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
stamp=gen/.stamp
if [ ! -f "$stamp" ] || [ -n "$(find ../../protos buf.gen.yaml -newer "$stamp" -type f | head -1)" ]; then
  rm -rf gen
  "$BUF" generate --template buf.gen.yaml
  touch "$stamp"
fi
out=dist/src/score.js
if [ ! -f "$out" ] || [ -n "$(find src gen tsconfig.json -newer "$out" -type f | head -1)" ]; then
  node_modules/.bin/tsc -p .
fi
echo "built $PWD/$out"
