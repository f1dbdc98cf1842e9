# mlworkflow-operator developer entry points. Everything runs from the virtualenv made here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv checkov mlflow-server demo test unit lint crds cluster control-plane kafka kafka-broker image bench-serving bench-drift bench-batch bench-automl bench-online bench-importance bench-operator-scale clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## checkov (tests/integration/test_chart_checkov.py) in a virtualenv of its own: its pins (packaging<24,
## python-dateutil<3) conflict with the project's. Exact versions in constraints-checkov.txt.
checkov: .venv-checkov/.installed

.venv-checkov/.installed: constraints-checkov.txt
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet -c constraints-checkov.txt checkov
	touch $@

## The MLflow tracking server the tests log to (tests/mlflow_server.py), in a virtualenv of its own: the full
## `mlflow` package pins pyarrow<26, the project has 26 (the runtimes need only mlflow-skinny, in the venv).
## Exact versions in constraints-mlflow.txt.
mlflow-server: .venv-mlflow/.installed

.venv-mlflow/.installed: constraints-mlflow.txt
	test -x .venv-mlflow/bin/python || $(PYTHON) -m venv .venv-mlflow
	.venv-mlflow/bin/pip install --quiet -c constraints-mlflow.txt mlflow
	touch $@

## The main job: the whole loop on this machine (train, serve, drift, retrain, champion/challenger), no cluster.
demo: venv
	$(BIN)/mlworkflow demo

## The control plane's binaries, built once from the Go module proxy and cached outside the repo.
control-plane:
	bash hack/build-control-plane.sh

## A single-node Kafka broker's jars (Maven, from a throw-away pom), fetched once and cached outside the repo.
kafka:
	bash hack/build-kafka.sh

## The one image of the operator and its runtimes. Needs an OCI builder (docker, podman or buildah's
## `bud`); none runs on the development machine, where tests/unit/test_dockerfile.py checks what it can.
IMAGE ?= mlworkflow-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BUILDER ?= $(shell command -v docker || command -v podman)
image:
	@test -n "$(BUILDER)" || { echo "no OCI builder (docker or podman) here: set BUILDER=..."; exit 1; }
	$(BUILDER) build -t $(IMAGE) .

## All tests: unit, then integration against a real API server (and Kafka broker) started once for the session.
test: venv control-plane kafka checkov mlflow-server
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

lint: venv
	$(BIN)/ruff check operator tests hack bench bentos
	$(BIN)/ruff format --check operator tests hack bench bentos
	$(BIN)/mypy
	$(BIN)/lint-imports

## Regenerate the CRD from the API types (the single source of truth), and the Helm chart's copy.
crds: venv
	$(BIN)/mlworkflow crds --output crds/mlworkflow.io_mlworkflows.yaml
	mkdir -p charts/mlworkflow-operator/crds
	cp crds/mlworkflow.io_mlworkflows.yaml charts/mlworkflow-operator/crds/

## Start the local control plane in the foreground; prints the `export KUBECONFIG=...` line. Ctrl-C stops it.
cluster: venv control-plane
	$(BIN)/python hack/cluster.py up

## Start a single-node Kafka broker in the foreground; prints its bootstrap servers. Ctrl-C stops it.
## Topics: make kafka-broker KAFKA_ARGS="--topic events:2"
kafka-broker: venv kafka
	PYTHONPATH=hack $(BIN)/python -m kafkalocal $(KAFKA_ARGS)

## Serving benchmark (needs Debian's wrk); prints a table against a plain scikit-learn endpoint.
bench-serving: venv
	$(BIN)/python bench/serving/run.py

## Permutation importance of an online snapshot: by feature block against scikit-learn's whole pipeline.
bench-importance: venv
	PYTHONPATH=operator $(BIN)/python bench/importance/run.py

## Drift-check benchmark: our check against a per-column KS floor, 10k to 1M rows.
bench-drift: venv
	$(BIN)/python bench/drift/run.py

## Batch prediction benchmark: our runtime (1 and 2 indexes) against read_parquet -> predict -> to_parquet, 1M rows.
bench-batch: venv
	$(BIN)/python bench/batch/run.py

## AutoML benchmark: our search (2 workers) against RandomizedSearchCV(n_jobs=2) and FLAML on 3 datasets.
## FLAML (and the lightgbm and xgboost it imports) go to a folder of their own, never into the venv.
BENCH_DEPS := .bench-deps
bench-automl: venv
	test -d $(BENCH_DEPS)/flaml || $(BIN)/pip install --quiet --no-deps --target $(BENCH_DEPS) \
		flaml==2.8.0 lightgbm==4.7.0 xgboost-cpu==2.1.4
	PYTHONPATH=operator $(BIN)/python bench/automl/run.py --flaml-path $(BENCH_DEPS)

## Operator scale benchmark: N WebService workflows on the test control plane (kwok nodes) against the floor.
## BENCH_ARGS="--full" runs 100, 500 and 1,000 workflows; the default 100.
bench-operator-scale: venv control-plane
	PYTHONPATH=operator:hack $(BIN)/python bench/operator_scale/run.py $(BENCH_ARGS)

## Online learning benchmark: our learner from Kafka against a bare partial_fit loop; freshness of snapshots.
bench-online: venv kafka
	PYTHONPATH=operator:hack:tests $(BIN)/python bench/online/run.py

clean:
	rm -rf $(VENV) .venv-checkov .venv-mlflow .bench-deps .pytest_cache .mypy_cache .ruff_cache build operator/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
