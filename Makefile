# The few commands a newcomer types. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench-fill bench-sink bench venv clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev,debezium]'
	@touch $(STAMP)

venv: $(STAMP)

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

pytest: $(STAMP)
	$(BIN)/pytest

bench-fill: $(STAMP)
	$(BIN)/python bench/fill.py

bench-sink: $(STAMP)
	$(BIN)/python bench/sink.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
