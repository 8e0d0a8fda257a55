# Common tasks. `make install` then `make test` is what CI runs (.ci/run).
PYTHON ?= python3
DATA ?= ../shared/flickr8k

.PHONY: install test lint format

install:
	$(PYTHON) -m pip install -e ".[cpu,dev]"

test: lint
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check captioner tests scripts
	$(PYTHON) -m ruff format --check captioner tests scripts

format:
	$(PYTHON) -m ruff format captioner tests scripts
	$(PYTHON) -m ruff check --fix captioner tests scripts
