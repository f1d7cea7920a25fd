# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Both create .venv with pip when it is missing or older than pyproject.toml, install the Debian
# packages the project needs when run as root and they are missing, then run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev,rl,dist,studio
# Debian packages the tests need (installed only when missing and running as root).
DEB_PACKAGES ?= wordnet-base wordnet-sense-index postgresql chromium postgresql-15-postgis-3
DEMO_DIR ?= demo-out

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install system-deps lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@if [ -d tests/plugins/example_plugin ]; then $(PY) -m pip install --quiet -e tests/plugins/example_plugin; fi
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (run as root or install them)"; \
	  fi; \
	fi

test: install system-deps
	$(PY) -m pytest -q

demo: install
	@mkdir -p $(DEMO_DIR)
	$(PY) -m zoomearth.demo $(DEMO_DIR)

# mypy checks the package as installed (agent/ as zoomearth.agent, ...) through a mirror of links
# that scripts/typecheck.py builds in build/typecheck/; it reports the source files' paths.
lint: install
	$(PY) -m ruff check zoomearth agent tools graphs tests benchmarks scripts
	$(PY) scripts/typecheck.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build/typecheck
