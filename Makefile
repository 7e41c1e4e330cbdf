# The few commands a newcomer types. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
AIRFLOW_STAMP := $(VENV)/.installed-airflow

.PHONY: demo airflow test lint typecheck pytest bench-fill bench-sink bench-dbt bench venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev,debezium]'
	@touch $(STAMP)

venv: $(STAMP)

# The [airflow] extra (apache-airflow 3.3): for `make airflow` and the DAG tests.
$(AIRFLOW_STAMP): $(STAMP)
	@$(BIN)/python -m pip install -q -e '.[airflow]'
	@touch $(AIRFLOW_STAMP)

## airflow: the DAGs in Airflow standalone (SQLite under .bankde/airflow); prints URL and password file; Ctrl-C stops
airflow: $(AIRFLOW_STAMP)
	$(BIN)/bankde airflow

## demo: set everything up and run the main job
demo: $(STAMP)
	$(BIN)/bankde db up
	$(BIN)/bankde db init
	$(BIN)/bankde fill

## test: lint, type-check and run the whole suite against real Postgres and chDB
test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src

pytest: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/pytest

bench-fill: $(STAMP)
	$(BIN)/python bench/fill.py

bench-sink: $(STAMP)
	$(BIN)/python bench/sink.py

bench-dbt: $(STAMP)
	$(BIN)/python bench/dbt.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
