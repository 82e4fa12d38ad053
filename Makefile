# make train      offline end-to-end demo: tiny BERT -> prepare -> train -> evaluate -> predict
# make test       the test suite (tests that need a GPU skip where there is none), but for ...
# make test-serving  ... trainer-export's tests (SavedModel, graph tokenizer); CI runs both
# make test-gpu   only the tests that need a real GPU
# Each creates .venv and installs the pinned working set on first use.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
DATA ?= $(SHARED)/data/sentiment140_sample.csv
RUN ?=
MODEL ?=
TEST_WORKERS ?= 2     # pytest-xdist processes: much of a test's time is single-threaded tracing

.PHONY: install train test test-serving test-gpu clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[cpu,test]'
	touch $@

install: $(VENV)/.installed

train: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DATA="$(DATA)" RUN="$(RUN)" MODEL="$(MODEL)" bash scripts/demo.sh

test: install
	SHARED_DIR="$(SHARED)" $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not serving"

test-serving: install
	SHARED_DIR="$(SHARED)" $(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m serving

test-gpu: install
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[gpu]'
	SHARED_DIR="$(SHARED)" $(VENV)/bin/python -m pytest -m gpu

clean:
	rm -rf runs $(VENV)
