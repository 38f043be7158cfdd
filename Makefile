# fxtap: `make demo` runs the main job on a built-in example; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Every package version make test installs; refreshed by `make lock`.
LOCK := requirements.lock
# The user extras (pyproject's optional-dependencies); the tests' tools are its `dev` group.
EXTRAS := plot,timm,hf,dataset
PIP := --disable-pip-version-check -q

.PHONY: demo test test-latest test-suite test-timm test-thorough zoo-hf lint lock dot chromium clean

# The venv holds exactly the lock's versions (--no-deps), then fxtap itself; `pip check` fails
# if the lock no longer satisfies what pyproject.toml declares.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP) --no-deps -r $(LOCK)
	$(PY) -m pip install $(PIP) --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

# Graphviz's dot and Chromium (browser tests): each installed from Debian when missing and running
# as root, else a clear message.
dot:
	@command -v dot >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Graphviz (dot) from Debian"; \
	    (apt-get install -y -qq graphviz >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq graphviz >/dev/null)); \
	  else \
	    echo "Graphviz's dot is missing: install it with 'sudo apt-get install -y graphviz' (render tests are skipped)"; \
	  fi; }

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium from Debian"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)); \
	  else \
	    echo "Chromium is missing: install it with 'sudo apt-get install -y chromium' (browser tests are skipped)"; \
	  fi; }

demo: $(STAMP) dot
	$(VENV)/bin/fxtap demo -o out

lint: $(STAMP)
	$(VENV)/bin/ruff check fxtap tests benchmarks
	$(VENV)/bin/ruff format --check fxtap tests benchmarks
	$(VENV)/bin/mypy fxtap

# The timm zoo runs in its own target to keep `make test` within its time budget; the timm
# FeatureGraphNet parity test (marked timm) runs in `make test`.
test: $(STAMP) dot chromium lint
	$(PY) -m pytest -q -n 2 --ignore=tests/test_zoo_timm.py $(PYTEST_ARGS)

# The newest release of every dependency, extra and test tool, ignoring the lock, in a venv of its
# own; prints what differs from the lock, then runs the same suite. Run it before `make lock`
# and before a release.
LATEST := .venv-latest
test-latest: dot chromium
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install $(PIP) --upgrade pip
	$(LATEST)/bin/python -m pip install $(PIP) --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]' --group dev
	@touch $(LATEST)/.installed-stamp
	$(LATEST)/bin/python tests/support/lockdiff.py $(LOCK)
	$(MAKE) --no-print-directory lint test-suite VENV=$(LATEST) STAMP=$(LATEST)/.installed-stamp

test-suite:
	$(PY) -m pytest -q -n 2 --ignore=tests/test_zoo_timm.py $(PYTEST_ARGS)

# Refresh the lock from the newest releases that resolve today (run make test-latest first).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install $(PIP) --upgrade pip
	.venv-lock/bin/python -m pip install $(PIP) '.[$(EXTRAS)]' --group dev
	{ echo "# make test installs exactly these versions (pip install --no-deps -r $(LOCK))."; \
	  echo "# Refreshed by 'make lock' on $$(date -u +%Y-%m-%d), Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())')."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude fxtap | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .venv-lock build fxtap.egg-info

# Optional: the timm zoo (48 smaller models, about 5 minutes on 2 cores).
test-timm: $(STAMP)
	$(PY) -m pytest -q -n 2 -m timm tests/test_zoo_timm.py

# Optional: measure every transformers model type (about an hour on 2 cores) and regenerate
# docs/zoo.md's table; a stopped run resumes where it was (delete ZOO_HF to start again).
ZOO_HF ?= zoo-hf.jsonl
zoo-hf: $(STAMP)
	cd tests && OMP_NUM_THREADS=1 $(abspath $(PY)) -m support.hf_survey $(abspath $(ZOO_HF))
	cd tests && $(abspath $(PY)) -m support.hf_table $(abspath $(ZOO_HF))

# Optional: the slow variants (every allowlisted op fuzzed, every detection model saved, ...).
test-thorough: $(STAMP) dot chromium
	FXTAP_THOROUGH=1 $(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .venv-lock out .pytest_cache .mypy_cache .ruff_cache .hypothesis
