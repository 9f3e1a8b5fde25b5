# The two commands of the README: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test test-fast clean stop airflow-ui mlflow-ui bench-api bench-quality bench-report stack stack-demo stack-status stack-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '.[dev]'  # dependencies only: the modules run from this directory
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cli demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25  # the 25 slowest, to keep the suite near 15 minutes

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

clean:
	rm -rf var .pytest_cache

# Triton, the API, Airflow (standalone or its servers) and the MLflow UI: every process group
# `python -m cli` started, SIGTERM then SIGKILL.
stop: $(STAMP)
	$(BIN)/python -m cli stop

# The production topology on this machine (Airflow on Celery + PostgreSQL + Redis, MLflow server,
# Dask, Triton, API under gunicorn): README "The production topology".
stack: $(STAMP)
	$(BIN)/python -m cli stack up

# The stack, then the nightly DAG run by its scheduler, the deploy, one answer: a line per stage.
stack-demo: $(STAMP)
	$(BIN)/python -m cli stack demo

stack-status: $(STAMP)
	$(BIN)/python -m cli stack status

stack-down: $(STAMP)
	$(BIN)/python -m cli stack down

airflow-ui: $(STAMP)
	$(BIN)/python -m cli airflow standalone

mlflow-ui: $(STAMP)
	$(BIN)/python -m cli mlflow-ui

# The API benchmark's load generator is Debian's wrk (apt; sudo where not root).
bench-api: $(STAMP)
	command -v wrk >/dev/null || $$([ "$$(id -u)" = 0 ] || echo sudo) sh -c 'apt-get update -q && apt-get install -y -q wrk'
	$(BIN)/python -m bench.api_latency --workdir /tmp/api_bench $(BENCH_API_ARGS)

# Benchmarks are modules of the bench package, run from the repository root: `python -m bench.<name>`.
bench-quality: $(STAMP)
	$(BIN)/python -m bench.quality

bench-report: $(STAMP)
	$(BIN)/python -m bench.report
