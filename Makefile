# The same commands the README and CI use. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# uv from PATH, else the one `make setup` installs into this Python from PyPI.
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
# Use the system's CA store, so installs also work behind a TLS-intercepting proxy.
export UV_SYSTEM_CERTS ?= 1
export BENTOML_DO_NOT_TRACK ?= true
PORT ?= 3000
AIRFLOW_PORT ?= 8080
# MODEL=<name> picks one model where the deployment has several (models/*.yaml).
MODEL_ARG = $(if $(MODEL),--model $(MODEL))

.PHONY: help setup demo serve airflow retrain status image image-tools observability-tools observability-check browser-tools k8s-check k8s-test-tools test-k8s bench-serving client grpc-stubs test lint typecheck check stop clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## install uv (from PyPI) if missing, then the locked environment in .venv
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.13"
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on our CI machines) nothing caches .pyc,
	# and every process (each Airflow task, each BentoML worker) compiled Evidently, scipy and
	# Airflow from source again: 113 s of a 185 s drift step under load was compile().
	$(UV) sync --frozen --compile-bytecode

demo: ## the whole loop on embedded defaults, with a summary (starts over each time)
	$(UV) run --frozen driftloop demo --reset

serve: ## serve the champion's Bento on http://127.0.0.1:3000 (PORT=..., WORKERS=..., MODEL=...)
	$(UV) run --frozen driftloop serve --port $(PORT) $(if $(WORKERS),--workers $(WORKERS)) $(MODEL_ARG)

airflow: ## Airflow UI, scheduler and dag-processor on http://127.0.0.1:8080 (AIRFLOW_PORT=...)
	$(UV) run --frozen driftloop airflow --port $(AIRFLOW_PORT)

retrain: ## run the retrain DAG once now (airflow dags test; MODEL=... with several models)
	$(UV) run --frozen driftloop retrain $(MODEL_ARG)

status: ## each model's champion and last retrain run (MODEL=... for one)
	$(UV) run --frozen driftloop status $(MODEL_ARG)

image: ## build the champion's OCI image with bentoml containerize, run it and check it (IMAGE_ARGS=...)
	$(UV) run --frozen driftloop image --check $(MODEL_ARG) $(IMAGE_ARGS)

image-tools: ## install buildah, podman, runc and debootstrap (Debian/Ubuntu, as root or with sudo) for daemonless builds
	@missing=""; for tool in buildah podman runc debootstrap; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q --no-install-recommends buildah podman runc debootstrap debian-archive-keyring; \
	else echo "buildah, podman, runc and debootstrap are installed"; fi

observability-tools: ## install Prometheus and promtool (Debian/Ubuntu, as root or with sudo) for the alert-rule and scrape tests
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then echo "prometheus and promtool are installed"; else \
	  echo "installing: prometheus"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q --no-install-recommends prometheus; fi

browser-tools: ## install Debian's chromium (as root or with sudo) for the Airflow UI browser test
	@if command -v chromium >/dev/null || command -v google-chrome >/dev/null; then echo "a Chromium browser is installed"; else \
	  echo "installing: chromium"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q --no-install-recommends chromium; fi

observability-check: ## promtool check and unit tests of the alert rules in deploy/prometheus/
	promtool check rules deploy/prometheus/driftloop-rules.yml
	promtool test rules deploy/prometheus/tests/driftloop-rules.test.yml

k8s-check: ## render every deploy/overlays/* (kubectl kustomize) and validate it strictly against Kubernetes 1.30 and the newest known
	$(UV) run --frozen python deploy/check.py

k8s-test-tools: ## etcd (Debian) and kube-apiserver + kube-controller-manager 1.20.2 built from Debian's source, cached in ~/.cache/driftloop (as root)
	bash deploy/k8s-test/build.sh

test-k8s: ## the Kubernetes tier alone: rollouts against a real API server (make k8s-test-tools first)
	$(UV) run --frozen pytest -m k8s tests/k8s

bench-serving: ## our Bento against a FastAPI peer under wrk, with a verdict per target (BENCH_ARGS=--quick|--duration N)
	@command -v wrk >/dev/null || { \
	  echo "installing: wrk"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q --no-install-recommends wrk; }
	$(UV) run --frozen python bench/serving.py $(BENCH_ARGS)

client: ## regenerate the typed HTTP client in clients/python from the served OpenAPI document (SPEC=your-spec.yaml)
	$(UV) run --frozen python clients/generate.py $(if $(SPEC),--spec $(SPEC))

grpc-stubs: ## regenerate the gRPC stubs in driftloop_grpc/v1 from proto/driftloop/v1 (grpcio-tools)
	$(UV) run --frozen python -m grpc_tools.protoc -Idriftloop_grpc/v1=proto/driftloop/v1 \
	  --python_out=. --pyi_out=. --grpc_python_out=. driftloop_grpc/v1/model_service.proto

test: ## the test suite: unit, DAG, model and integration tiers (real PostgreSQL, Airflow, bentoml serve)
	$(UV) run --frozen pytest

lint: ## ruff check and format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: ## mypy (strict on training/ and bentos/)
	$(UV) run --frozen mypy

check: lint typecheck test ## everything CI checks

stop: ## stop the embedded PostgreSQL
	$(UV) run --frozen driftloop db stop

clean: stop ## stop the embedded PostgreSQL and delete the data dir (.driftloop)
	rm -rf .driftloop
