# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the stamp changes whenever the pins, the lock or the package metadata change
STAMP := $(VENV)/.installed-$(shell cat requirements/pins.txt requirements/lock.txt pyproject.toml | sha1sum | cut -c1-12)
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install browser demo explore test test-fast lint docs bench gpu-checks clean-logs

$(STAMP): requirements/pins.txt requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/pins.txt -c requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Synthetic dataset (generated once, cached under data/), CLIP training on CPU, test-split retrieval table.
demo: install
	$(PY) -m cxr_vlp.train +experiment=demo

# the explorer (docs/explorer.md) on the newest contrastive demo checkpoint (make demo first), on 127.0.0.1:8765;
# EXPLORE_ARGS="port=8800 split=val" adds options
explore: install
	@ckpt=$$(ls -t logs/*demo*/runs/*/checkpoints/last.ckpt 2>/dev/null | grep -v '/reportgen' | head -n 1); \
	if [ -z "$$ckpt" ]; then echo "no demo checkpoint under logs/*demo*/runs/: run make demo first" >&2; exit 1; fi; \
	$(TEST_ENV) $(PY) -m cxr_vlp.explore ckpt_path=$$ckpt $(EXPLORE_ARGS)

# headless Chromium for tests/browser (Debian's chromium + chromium-driver), installed when missing and apt-get can
# run (as root); otherwise those tests are skipped with the install command
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver; } || echo "apt-get could not install chromium / chromium-driver"; \
	  else echo "no chromium / chromedriver: tests/browser will be skipped (apt-get install chromium chromium-driver)"; fi; \
	fi

test: install browser
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests

# unit tests only (seconds)
test-fast: install
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS) tests/unit

clean-logs:
	rm -rf logs/debug logs/train

# ruff's checks and its formatting (checked only; settings in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check cxr_vlp tests bench scripts
	$(VENV)/bin/ruff format --check cxr_vlp tests bench scripts

# the documentation site (MkDocs, mkdocs.yml) into site/; a warning such as a broken link fails the build
docs: install
	$(PY) -m mkdocs build --strict --site-dir site

# performance figures (prints, never asserts)
bench: install
	$(PY) bench/train_step.py +experiment=demo
	$(PY) bench/framework_overhead.py +experiment=demo
	$(PY) bench/image_cache.py
	$(PY) bench/data_loading.py
	$(PY) bench/explore_query.py
	$(PY) bench/retrieval_scale.py

# on a machine with a CUDA device: GPU tests, fp32 vs bf16 train-step throughput, the demo on the GPU
gpu-checks: install
	bash bench/gpu_checks.sh $(PY)
