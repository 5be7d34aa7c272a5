# Everything a user or CI needs, from nothing but Python 3.11: each target creates .venv when it
# is missing and installs the package with the pinned constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check freezepolicy tests
	$(BIN)/mypy freezepolicy
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m freezepolicy.demo

# Every benchmark of docs/performance.md (about 5 minutes on 2 cores): prints the table, writes
# bench/results.json and regenerates docs/performance.md and docs/images/bench_scaling.png.
bench: $(STAMP)
	$(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check freezepolicy tests
	$(BIN)/freezepolicy lint policies/*.freeze

clean:
	rm -rf $(VENV) dist build .pytest_cache .hypothesis
