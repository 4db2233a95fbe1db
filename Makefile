# Entry points: `make run` starts Orthanc with the plugin; `make test` runs the test suite.
# Both install what is missing first (Debian packages, then a virtual environment).
# `make test-compat` runs the test suite on the other Orthanc generations (Debian 12, 13, unstable).
SHELL := /bin/bash
# The Python plugin embeds Debian's system Python: the venv must come from the same interpreter.
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := orthanc orthanc-python dcmtk python3-venv
# Only the tests need these: several Orthanc nodes on one PostgreSQL database; Chromium for the
# Orthanc Explorer tests (Playwright drives /usr/bin/chromium, it downloads no browser); dicom3tools'
# dciodvfy, which validates every DICOM object the plugin writes.
DEBIAN_TEST_PACKAGES := orthanc-postgresql postgresql chromium dicom3tools

.PHONY: run test lint test-compat debian-packages install install-dev system-packages test-system-packages bench train private-dictionary clean-state

run: install
	mkdir -p state
	@echo "Orthanc with the AI plugin: http://localhost:8042 (DICOM: AET ORTHANC, port 4242). Ctrl-C stops it."
	TCP_NODELAY=1 Orthanc orthanc.json

test: install-dev
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Lint (ruff) and type checks (mypy), both configured in pyproject.toml.
lint: install-dev
	$(VENV)/bin/ruff check plugin bench docker training tests
	$(VENV)/bin/mypy

# The whole suite on every other Orthanc generation, each in a cached debootstrap root (tests/compat/).
test-compat:
	@command -v debootstrap >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
	$(SUDO) $(SYSTEM_PYTHON) tests/compat/run_generations.py $(if $(COMPAT_COMMAND),-- $(COMPAT_COMMAND))

# The one list of Debian packages: the host installs it, the compat roots are built from it.
debian-packages:
	@echo $(DEBIAN_PACKAGES) $(DEBIAN_TEST_PACKAGES)

install: system-packages $(VENV)/.runtime-installed

install-dev: install test-system-packages $(VENV)/.dev-installed

test-system-packages:
	@if [ ! -f /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null || ! command -v dciodvfy >/dev/null; then \
	  echo "Installing Debian packages for the tests: $(DEBIAN_TEST_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TEST_PACKAGES) && \
	  { $(SUDO) systemctl disable --now postgresql 2>/dev/null || $(SUDO) service postgresql stop 2>/dev/null || true; }; \
	fi

system-packages:
	@missing=""; \
	command -v Orthanc >/dev/null || missing="yes"; \
	[ -f /usr/share/orthanc/plugins/libOrthancPython.so ] || missing="yes"; \
	command -v storescu >/dev/null || missing="yes"; \
	$(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="yes"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) && \
	  { echo "Stopping the Orthanc service Debian starts (it would hold ports 8042/4242)"; \
	    $(SUDO) systemctl disable --now orthanc 2>/dev/null || $(SUDO) service orthanc stop 2>/dev/null || true; }; \
	fi

$(VENV)/.runtime-installed: requirements.txt requirements-nodeps.txt
	[ -x $(VENV)/bin/pip ] || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# Speed and memory side by side, with and without the plugin (docs/benchmarks.md); a few minutes.
bench: install-dev
	$(VENV)/bin/python bench/bench_models.py
	$(VENV)/bin/python bench/bench_per_image_steps.py
	$(VENV)/bin/python bench/bench_pipeline.py --idle-plugin
	$(VENV)/bin/python bench/bench_router.py
	$(VENV)/bin/python bench/bench_find.py

# Retrain and re-evaluate one model from ../shared/data, rewriting models/$(MODEL)/ (training/README.md).
MODEL ?= lung-ct-3
TRAIN_VENV := .venv-train
train: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python -m training $(MODEL)

$(TRAIN_VENV)/.installed: requirements-train.txt
	[ -x $(TRAIN_VENV)/bin/pip ] || $(SYSTEM_PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q -r requirements-train.txt
	touch $@

# Regenerate orthanc.json's "Dictionary" and docs/private-tags.md from plugin/orthanc_ai/dicom/private_tags.py.
private-dictionary: install
	PYTHONPATH=plugin $(VENV)/bin/python -m orthanc_ai.dicom.private_tags --update orthanc.json

clean-state:
	rm -rf state
