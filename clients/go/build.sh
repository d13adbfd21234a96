#!/usr/bin/env bash
# Builds the Go client: installs the pinned protoc plugins into bin/, generates gen/ from ../../protos
# with buf (local plugins), builds bin/logmesh-score. Idempotent; quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
BUF=${BUF:-$ROOT/.cache/buf/node_modules/.bin/buf}
[ -x "$BUF" ] || BUF=$(command -v buf || true)
[ -n "$BUF" ] || { echo "buf not found: run 'make tools' in $ROOT" >&2; exit 1; }
export GOFLAGS=-mod=mod
mkdir -p bin
# plugins, pinned (protoc-gen-go comes with the protobuf runtime version in go.mod)
[ -x bin/protoc-gen-go ] || GOBIN=$PWD/bin go install google.golang.org/protobuf/cmd/protoc-gen-go
[ -x bin/protoc-gen-go-grpc ] || GOBIN=$PWD/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
# regenerate only when a proto (or the template) is newer than the generated code
stamp=gen/.stamp
if [ ! -f "$stamp" ] || [ -n "$(find ../../protos buf.gen.yaml -newer "$stamp" -type f | head -1)" ]; then
  rm -rf gen
  "$BUF" generate --template buf.gen.yaml
  touch "$stamp"
fi
go build -o bin/logmesh-score ./cmd/logmesh-score
go build -o bin/logmesh-load ./cmd/logmesh-load  # load and reflection checks (tests/integration/test_concurrency.py)
echo "built $PWD/bin/logmesh-score $PWD/bin/logmesh-load"
