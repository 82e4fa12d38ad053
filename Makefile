# make train   offline end-to-end demo: tiny BERT -> prepare -> train -> evaluate -> predict
# make test    the test suite
# Both create .venv and install the pinned working set on first use.
PYTHON ?= python3
VENV ?= .venv
SHARED ?= ../shared
DATA ?= $(SHARED)/data/sentiment140_sample.csv
RUN ?= runs/demo
MODEL ?=

.PHONY: install train test benchmark quality clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DATA="$(DATA)" RUN="$(RUN)" MODEL="$(MODEL)" bash scripts/demo.sh

test: install
	SHARED_DIR="$(SHARED)" $(VENV)/bin/python -m pytest

clean:
	rm -rf runs $(VENV)
