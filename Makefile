# The few commands a newcomer needs. README names two: `make demo`, `make test`.
#
# Build caches live outside the clone, so a fresh clone on a warm machine
# reuses them (and a new machine simply starts with them empty).
CACHE_DIR ?= $(HOME)/.cache/hpd-encode
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
export PIP_CACHE_DIR ?= $(CACHE_DIR)/pip
export PIP_DISABLE_PIP_VERSION_CHECK = 1

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
# Release speed, no fat LTO: the test/demo build. Wheels use the release profile.
PROFILE ?= fastbuild

.PHONY: all venv build demo test test-rust test-python bench lint ci wheel clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

# Pinned dependencies, reinstalled only when requirements.lock changes.
# A cold pip cache keeps a second copy of every wheel (about 3.5 GB for torch's CUDA ones) beside
# the ~6.5 GB virtualenv: with under 16 GB free there, install without it rather than fill the disk.
PIP_CACHE_MIN_FREE_MB ?= 16384
$(DEPS_STAMP): requirements.lock | $(PY)
	$(PY) -m pip install -q pip==26.3
	@mkdir -p "$(PIP_CACHE_DIR)"; \
	free_mb=$$(df -Pk "$(PIP_CACHE_DIR)" | awk 'NR==2 {print int($$4 / 1024)}'); \
	if [ "$$free_mb" -lt $(PIP_CACHE_MIN_FREE_MB) ]; then \
		echo "only $$free_mb MB free for $(PIP_CACHE_DIR): installing without pip's cache"; \
		no_cache=--no-cache-dir; \
	fi; \
	$(PY) -m pip install -q $$no_cache -r requirements.lock
	touch $@

venv: $(DEPS_STAMP)

# Builds the extension into the virtualenv (quick when nothing changed).
build: $(DEPS_STAMP)
	$(VENV)/bin/maturin develop --profile $(PROFILE) -q

demo: build
	$(VENV)/bin/hpd-encode demo

test-rust:
	cargo test --quiet

# pytest exits 5 when it collects no tests: that is a broken suite, say so.
test-python: build
	@$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating that as a failure"; exit 1; fi; \
	exit $$rc

test: test-rust test-python

# What CI runs (.ci/run): the tests, then lint.
ci: test lint

# Side-by-side comparisons with the reference way (see README's tables).
bench: build
	$(PY) benches/bench_images.py
	$(PY) benches/bench_encode.py
	$(PY) benches/bench_writer.py
	$(PY) benches/bench_reader.py
	$(PY) benches/bench_verify.py
	$(PY) benches/bench_overlap.py
	$(PY) benches/bench_index.py
	$(PY) benches/bench_metadata.py
	$(PY) benches/bench_plan.py --skip-old
	$(PY) benches/bench_s3.py

# Rust: rustfmt + clippy; Python: ruff (lint and format) and mypy, pinned in requirements.lock.
lint: $(DEPS_STAMP)
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy

# Release wheel (abi3, fat LTO) into dist/.
wheel: $(DEPS_STAMP)
	$(VENV)/bin/maturin build --release --out dist

clean:
	rm -rf $(VENV) dist
