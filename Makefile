# lambdarec - `make help` lists the targets. The two that matter: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
UV_VERSION  := 0.13.9
TOOLS       := .tools
UV          := $(TOOLS)/bin/uv
VENV        := .venv
PY          := $(VENV)/bin/python
FLINK_VENV  := .venv-flink
MILVUS_VENV := .venv-milvus
STATE       := .state
export JAVA_HOME ?= /usr/lib/jvm/java-17-openjdk-amd64
export TF_USE_LEGACY_KERAS := 1
# gRPC fork handlers kill a Popen child now and then once a process used Milvus (grpc/grpc#43055).
export GRPC_ENABLE_FORK_SUPPORT ?= false
export SPARK_LOCAL_IP := 127.0.0.1

PYTEST_ARGS ?=
#: `make test` runs the demo and the daily pipeline's tests beside the rest (tests/conftest.py);
#: 0 runs everything in this process, one test at a time.
TEST_LANES ?= 2

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "lambdarec targets:\n"} /^[a-zA-Z0-9_-]+:.*##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# ---------------------------------------------------------------------------------------------
# Setup: everything a fresh machine needs, idempotent (a ready machine re-runs in seconds)
# ---------------------------------------------------------------------------------------------
.PHONY: setup
setup: system-deps $(VENV)/.installed $(FLINK_VENV)/.installed $(MILVUS_VENV)/.installed kafka-jars flink-jars $(STATE)/feast/.applied $(STATE)/web-assets/manifest.json ## Install everything (system packages, virtualenvs, Kafka and Flink jars, Feast registry, Data Docs' CSS/JS)

.PHONY: system-deps
system-deps: ## Install Debian packages the platform needs (redis-server, nginx, npm, postgresql) and check Java 17 and Maven
	@test -x "$(JAVA_HOME)/bin/java" || { echo "Java 17 not found at JAVA_HOME=$(JAVA_HOME); install openjdk-17-jdk-headless or set JAVA_HOME"; exit 1; }
	@command -v mvn >/dev/null || { echo "Installing maven (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }
	@command -v npm >/dev/null || { echo "Installing npm (apt; fetches the Data Docs' CSS/JS)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@command -v redis-server >/dev/null || { \
	  echo "Installing redis-server (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  (service redis-server stop >/dev/null 2>&1 || true); \
	  (systemctl disable --now redis-server >/dev/null 2>&1 || true); }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "Installing postgresql (apt; Airflow's and MLflow's metadata in make rehearse-cluster)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  (service postgresql stop >/dev/null 2>&1 || true); \
	  (systemctl disable --now postgresql >/dev/null 2>&1 || true); }
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || { \
	  echo "Installing nginx-light (apt; the proxy in front of serving)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
	  (service nginx stop >/dev/null 2>&1 || true); \
	  (systemctl disable --now nginx >/dev/null 2>&1 || true); }

$(UV):
	$(PYTHON_BOOT) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

$(VENV)/.installed: requirements.txt pyproject.toml | $(UV)
	@test -x $(PY) || $(UV) venv -q -p $(PYTHON_BOOT) $(VENV)
	$(UV) pip sync -q -p $(PY) requirements.txt
	$(UV) pip install -q -p $(PY) --no-deps -e .
	@touch $@

$(FLINK_VENV)/.installed: env/requirements-flink.txt | $(UV)
	@test -x $(FLINK_VENV)/bin/python || $(UV) venv -q -p $(PYTHON_BOOT) $(FLINK_VENV)
	$(UV) pip sync -q -p $(FLINK_VENV)/bin/python env/requirements-flink.txt
	@touch $@

# Milvus 2.3.5 standalone server for large catalogs (its own virtualenv: its launcher pins old
# pymilvus/protobuf); the core venv's pymilvus 3 is the client.
$(MILVUS_VENV)/.installed: env/requirements-milvus.txt | $(UV)
	@test -x $(MILVUS_VENV)/bin/python || $(UV) venv -q -p $(PYTHON_BOOT) $(MILVUS_VENV)
	$(UV) pip sync -q -p $(MILVUS_VENV)/bin/python env/requirements-milvus.txt
	@touch $@

# The browser tests drive the distribution's headless Chromium through its chromedriver.
.PHONY: browser-deps
browser-deps: ## Install chromium and chromium-driver (apt; only the browser tests need them)
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { \
	  echo "Installing chromium and chromium-driver (apt; the browser tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# `docker compose config` validates the deployment files in the tests; where the docker CLI lacks
# the compose plugin, build it from its Go module (minutes once, seconds after).
.PHONY: compose-plugin
compose-plugin: ## Install the docker compose CLI plugin if missing (validation only; no engine needed)
	@docker compose version >/dev/null 2>&1 || bash docker/install-compose-plugin.sh

.PHONY: kafka-jars
kafka-jars: $(VENV)/.installed ## Resolve Apache Kafka's broker jars from Maven Central (skipped when current)
	@$(VENV)/bin/lambdarec platform kafka-jars

# `feast apply` of feature_repo/ into the state folder's registry, again whenever a definition changes.
$(STATE)/feast/.applied: $(VENV)/.installed $(wildcard feature_repo/*.py) include/lambdarec/tables.py
	@out=$$($(VENV)/bin/lambdarec features apply 2>&1) || { echo "$$out"; exit 1; }; echo "Feast: feature_repo/ applied (registry and online store under $(STATE)/feast)"
	@touch $@

# The Data Docs' CSS/JS from their npm packages (with licences), so the pages work offline.
$(STATE)/web-assets/manifest.json: $(VENV)/.installed include/lambdarec/quality/offline.py
	@$(VENV)/bin/lambdarec quality fetch-assets

.PHONY: lock
lock: | $(UV) ## Re-resolve the dependency locks (requirements.txt, env/requirements-flink.txt)
	$(UV) pip compile -q -p 3.11 env/requirements.in -o requirements.txt
	$(UV) pip compile -q -p 3.11 env/requirements-flink.in -o env/requirements-flink.txt
	$(UV) pip compile -q -p 3.11 env/requirements-milvus.in -o env/requirements-milvus.txt

# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
.PHONY: demo
demo: setup ## Bring the stack up on this machine and run the recommender end to end (PAUSED=1: scheduled DAGs stay paused after it)
	$(if $(PAUSED),LAMBDAREC_DAGS_PAUSED=$(PAUSED) )$(VENV)/bin/lambdarec demo

PORT ?= 8000
# One worker with Milvus Lite (its file admits one process); with a Milvus server
# (LAMBDAREC_MILVUS_URI) SERVE_WORKERS=3 SERVE_THREADS=2, as the platform runs it (services.serving_workers).
SERVE_WORKERS ?= 1
SERVE_THREADS ?= 8
.PHONY: serve
serve: setup ## Serve the Flask app with gunicorn on 127.0.0.1:PORT (/recommend, /events, /health, /docs)
	$(VENV)/bin/gunicorn 'serving:create_app()' -b 127.0.0.1:$(PORT) -w $(SERVE_WORKERS) --threads $(SERVE_THREADS)

.PHONY: platform-up
platform-up: setup ## Start the local services (Kafka, Redis, MLflow, Airflow) and unpause the scheduled DAGs (PAUSED=1: keep them paused)
	$(if $(PAUSED),LAMBDAREC_DAGS_PAUSED=$(PAUSED) )$(VENV)/bin/lambdarec platform up

.PHONY: platform-down
platform-down: ## Stop every local service of the project
	@if [ -x $(VENV)/bin/lambdarec ]; then $(VENV)/bin/lambdarec platform down; fi

.PHONY: status
status: ## Show what runs and every URL
	$(VENV)/bin/lambdarec platform status

# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------
.PHONY: test
test: setup compose-plugin browser-deps lint ## Install what tests need, then run every test tier (unit, dags, integration, e2e) on two workers (a serial lane and a pool)
	@set +e; $(PY) -m pytest -n $(TEST_LANES) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

.PHONY: test-unit
test-unit: setup ## Fast tests only (unit + dags)
	$(PY) -m pytest tests/unit tests/dags $(PYTEST_ARGS)

.PHONY: lint
lint: $(VENV)/.installed ## ruff (with the AIR, TC, TID rules), ruff format --check, the import contracts and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(VENV)/bin/mypy

.PHONY: format
format: $(VENV)/.installed ## Format and auto-fix with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# ---------------------------------------------------------------------------------------------
# Benchmarks: each prints one JSON line of figures
# ---------------------------------------------------------------------------------------------
EVENTS ?=
.PHONY: bench-ingest
bench-ingest: setup ## Produce EVENTS (1M) generated events into Kafka and read them back (JSON line)
	@$(PY) bench/bench_ingest.py --events $(or $(EVENTS),1000000)

.PHONY: bench-batch
bench-batch: setup ## The daily Spark job over 30 days of EVENTS (10M) generated events, vs DuckDB (JSON line)
	@$(PY) bench/bench_batch.py --events $(or $(EVENTS),10000000)

.PHONY: rehearse-cluster
rehearse-cluster: setup ## Scale-out rehearsal on loopback: PostgreSQL for Airflow and MLflow metadata, 3 Kafka nodes with a broker-loss drill, a Flink session cluster with the speed layer and a TaskManager-loss drill, a Spark master + 2 workers with the daily job and a worker-loss drill (JSON line)
	@$(PY) bench/rehearse_cluster.py --workers 2

.PHONY: flink-jars
flink-jars: $(VENV)/.installed $(FLINK_VENV)/.installed ## Resolve the Flink Kafka/Parquet connector jars and build the Java functions (speed layer)
	@$(PY) -m lambdarec.speed.jars

.PHONY: bench-serving
bench-serving: setup ## /recommend at 200 requests/s against gunicorn, 1M items in the Milvus server (JSON line)
	$(PY) bench/bench_serving.py --catalog-items 1000000 --milvus server --rps 200 --seconds 60 --settle-s 120 --also-rps 50,100,150

.PHONY: bench-freshness
bench-freshness: setup flink-jars ## Event -> online-feature freshness at a steady 1,000 events/s (JSON line)
	@$(PY) bench/bench_freshness.py --rate 1000

.PHONY: bench-freshness-max
bench-freshness-max: setup flink-jars ## Highest steady rate with freshness p99 <= 500 ms, SQLite then Redis (JSON lines)
	@$(PY) bench/bench_freshness.py --find-max --online-store sqlite
	@$(PY) bench/bench_freshness.py --find-max --online-store redis

.PHONY: bench-exposure
bench-exposure: setup ## Exposure as training signal offline: the DeepFM with and without impressions (JSON line)
	@$(PY) bench/bench_exposure.py --tt-epochs 2 --queries 4000 --test-queries 2000 --fm-epochs 8

.PHONY: bench-exposure-ab
bench-exposure-ab: setup ## Live A/B through serving: the champion vs the DeepFM trained on its impressions (JSON line)
	@$(PY) bench/bench_ab.py --skip detection --skip aa --exposure --shoppers 2000 --minutes 8 --rps 40

.PHONY: bench-speed
bench-speed: setup flink-jars ## Highest rate the speed layer holds for 2 minutes without growing lag (JSON line)
	@$(PY) bench/bench_speed.py

.PHONY: bench-faults
bench-faults: setup flink-jars ## Fault drills at full length: broker, job and online store killed mid-stream (JSON line)
	@$(PY) bench/bench_faults.py

.PHONY: bench-train
bench-train: setup ## Training throughput of the two-tower and DeepFM models (JSON line per model)
	@$(PY) bench/bench_train.py --dataset synthetic --epochs 3

.PHONY: bench-vector
bench-vector: setup ## Vector index build time, p50/p99 and recall@100 (JSON line)
	@$(PY) bench/bench_vector.py

.PHONY: bench-ab
bench-ab: setup ## A/B readout on simulated shoppers: popular vs the champion detected, A/A false alarms over 20 seeds (JSON line)
	@$(PY) bench/bench_ab.py

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
DATASET ?= synthetic
.PHONY: evaluate
evaluate: setup ## Full-ranking evaluation of the models and baselines on DATASET (synthetic|taobao|diginetica|<file>)
	OPENBLAS_NUM_THREADS=1 $(PY) include/models/evaluate.py --dataset $(DATASET)

.PHONY: evaluate-all
evaluate-all: setup ## The served pipeline vs the best baseline on the four development datasets (one JSON line each)
	OPENBLAS_NUM_THREADS=1 $(PY) include/models/evaluate_all.py

.PHONY: train
train: setup ## Train two-tower + DeepFM on DATASET into .state/models/DATASET
	$(PY) include/models/train.py --dataset $(DATASET) --out $(STATE)/models/$(DATASET)

.PHONY: clean
clean: platform-down ## Remove the state folder (data, logs, lake) but keep the environments
	rm -rf $(STATE)/run $(STATE)/logs $(STATE)/data $(STATE)/lake $(STATE)/airflow $(STATE)/mlflow $(STATE)/flink/checkpoints

.PHONY: distclean
distclean: clean ## Remove environments too
	rm -rf $(VENV) $(FLINK_VENV) $(MILVUS_VENV) $(TOOLS) $(STATE)
