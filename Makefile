# vx11d: `make demo` runs the daemon set in a sandbox systemd; `make test` runs every test.
# Both install what they need (apt packages, a virtualenv in .venv) and are idempotent.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
APT_PACKAGES := python3 python3-venv python3-dev build-essential cmake pkg-config \
	libsystemd-dev systemd systemd-container dbus prometheus iproute2 procps curl pigz \
	prometheus-alertmanager prometheus-node-exporter systemd-journal-remote openssl
STAMP := $(VENV)/.vx11-deps

.PHONY: demo test lint unit bench deps apt clean

deps: apt $(STAMP)

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $$missing \
			|| exit 1; \
	fi

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(VENV)/bin/pip install -q -e '.[hermes,test]'
	touch $(STAMP)

lint: deps
	$(VENV)/bin/ruff check .

test: deps lint
	$(VENV)/bin/python -m pytest

unit: deps
	$(VENV)/bin/python -m pytest tests/unit tests/integration

demo: deps
	$(VENV)/bin/python -m vx11d.ctl.demo

bench: deps
	for b in bench/*.py; do $(VENV)/bin/python $$b --quick || exit 1; done

clean:
	-$(VENV)/bin/vx11ctl sandbox down
	rm -rf $(VENV) .pytest_cache .ruff_cache
