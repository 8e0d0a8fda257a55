# Common tasks. `make install` then `make test` is what CI runs (.ci/run).
PYTHON ?= python3
DATA ?= ../shared/flickr8k

.PHONY: install test lint format flickr8k

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

# The reference model from scratch: extract, train, then dev and test scores, greedy and beam.
RUN ?= runs/flickr8k
flickr8k:
	captioner extract --data $(DATA) --encoder efficientnet_lite0
	captioner train --data $(DATA) --config configs/flickr8k.toml --run-dir $(RUN)
	captioner evaluate --run $(RUN) --split dev --beam 1
	captioner evaluate --run $(RUN) --split dev
	captioner evaluate --run $(RUN) --split test --beam 1
	captioner evaluate --run $(RUN) --split test
