# fxtap: `make demo` runs the main job on a built-in example; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-timm lint docs-check dot chromium clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,plot,timm,hf,audio,gradcam,browser,dataset]'
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

# Optional: the timm zoo (48 smaller models, about 5 minutes on 2 cores).
test-timm: $(STAMP)
	$(PY) -m pytest -q -n 2 -m timm tests/test_zoo_timm.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
