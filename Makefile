# Common tasks. `make install` then `make test` is what CI runs (.ci/run).
PYTHON ?= python3
DATA ?= ../shared/flickr8k

.PHONY: install test test-fast lint format flickr8k flickr8k-grid flickr8k-attention

install:
	$(PYTHON) -m pip install -e ".[cpu,dev]"

# Two pytest workers, each taking whole test files (their module fixtures train once): most
# tests run tiny models, whose time is Python's and one core's, so two at a time use both cores
# (a full run: 7 min against 10-11 one at a time on the 2-core CPU, README "Test"). Two, not
# one per core: every worker holds TensorFlow and its models (up to about 3 GB). The slowest 15
# tests are listed at the end.
PYTEST_WORKERS ?= 2

test: lint
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15

# While editing: everything but the tests marked slow (training runs, subprocesses); its time
# is measured in the README's "Test" section. Lint first as `test` does: ruff takes under a second and fails what CI would.
test-fast: lint
	$(PYTHON) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile

lint:
	$(PYTHON) -m ruff check captioner tests scripts
	$(PYTHON) -m ruff format --check captioner tests scripts

format:
	$(PYTHON) -m ruff format captioner tests scripts
	$(PYTHON) -m ruff check --fix captioner tests scripts

# The pooled-feature LSTM pair (shipped until 2026-12-03; the shipped model is now the Up-Down
# pair of flickr8k-grid below) from scratch: extract, train two seeds, then dev and test scores of the
# best single model (seed 0, chosen on dev) and of the two-model ensemble, greedy and beam
# (the beam settings come from configs/flickr8k.toml, chosen with scripts/tune_decoding.py).
RUN ?= runs/flickr8k
DEV_TEST = dev test
flickr8k:
	captioner extract --data $(DATA) --encoder efficientnet_lite1
	captioner train --data $(DATA) --config configs/flickr8k.toml --run-dir $(RUN)-seed0 --seed 0
	captioner train --data $(DATA) --config configs/flickr8k.toml --run-dir $(RUN)-seed1 --seed 1
	for split in $(DEV_TEST); do \
	  captioner evaluate --run $(RUN)-seed0 --split $$split --beam 1 && \
	  captioner evaluate --run $(RUN)-seed0 --split $$split && \
	  captioner evaluate --run $(RUN)-seed0 --run $(RUN)-seed1 --split $$split --beam 1 && \
	  captioner evaluate --run $(RUN)-seed0 --run $(RUN)-seed1 --split $$split || exit 1; \
	done

# The grid decoders over Lite1's 8x8 grid (docs/results.md, "Grid decoders on dev"): seeds 0
# and 1 of one recipe and their ensemble, greedy and beam, on dev only. GRID picks the recipe:
# attention (configs/flickr8k-attention.toml, with GRID_SET="--set model.dropout=0.6" for the
# dropout tried last), updown (the cosine recipe, half the time), updown-plateau or transformer.
# The shipped model is the updown-plateau pair (Up-Down's recipe until 2026-12-07), scored on
# test once it had passed the rule on dev: GRID=updown-plateau GRID_SPLITS="dev test".
GRID ?= attention
GRID_SET ?=
GRID_SPLITS ?= dev
flickr8k-grid:
	captioner extract --data $(DATA) --encoder efficientnet_lite1 --grid
	for seed in 0 1; do \
	  captioner train --data $(DATA) --config configs/flickr8k-$(GRID).toml $(GRID_SET) \
	    --run-dir $(RUN)-$(GRID)-seed$$seed --seed $$seed || exit 1; \
	done
	for split in $(GRID_SPLITS); do for beam in 1 3; do \
	  captioner evaluate --run $(RUN)-$(GRID)-seed0 --split $$split --beam $$beam && \
	  captioner evaluate --run $(RUN)-$(GRID)-seed1 --split $$split --beam $$beam && \
	  captioner evaluate --run $(RUN)-$(GRID)-seed0 --run $(RUN)-$(GRID)-seed1 --split $$split \
	    --beam $$beam || exit 1; \
	done; done

flickr8k-attention:
	$(MAKE) flickr8k-grid GRID=attention
