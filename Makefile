# vx11d: `make demo` runs the daemon set in a sandbox systemd; `make test` runs every test.
# Both install what they need (apt packages, a virtualenv in .venv) and are idempotent.
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
APT_PACKAGES := python3 python3-venv python3-dev build-essential cmake pkg-config \
	libsystemd-dev systemd systemd-container dbus prometheus iproute2 procps curl pigz \
	prometheus-alertmanager prometheus-node-exporter systemd-journal-remote openssl \
	mmdebstrap dpkg-dev lintian qemu-system-x86 openssh-client nginx wrk
STAMP := $(VENV)/.vx11-deps
# Every program a bench/*.py runs (the peers and load tools come from APT_PACKAGES;
# tests/unit/test_makefile.py keeps this list complete).
BENCH_TOOLS := wrk nginx prometheus-node-exporter promtool pigz gzip tar ps curl openssl \
	unshare cc gcc systemd-run systemd-analyze systemctl journalctl systemd-nspawn systemd-sysusers \
	python3 install cat uname qemu-system-x86_64 ssh ssh-keygen mkfs.ext4

# Operator targets run vx11ctl on this host when it runs systemd (the installed package,
# else the checkout's), otherwise inside the sandbox (`vx11ctl sandbox`).
ifeq ($(wildcard /run/systemd/system),)
VX11CTL ?= $(VENV)/bin/vx11ctl sandbox exec vx11ctl
SANDBOX_UP = $(VENV)/bin/vx11ctl sandbox up
else
VX11CTL ?= $(shell command -v vx11ctl || echo $(VENV)/bin/vx11ctl)
SANDBOX_UP = true
endif

.PHONY: help demo test lint unit bench bench-tools deps apt model clean up-core up-full-test \
	down smoke \
	llama-server \
	status logs audit-rotate audit-rotate-do

help: ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

up-core: deps ## start the core set (profile solo_madre), booting the sandbox if needed
	$(SANDBOX_UP)
	$(VX11CTL) up --profile solo_madre

up-full-test: deps ## start the full set (Hermes too), booting the sandbox if needed
	$(SANDBOX_UP)
	$(VX11CTL) up --profile full

down: ## stop every vx11 unit
	$(VX11CTL) down

smoke: ## health, the 401 sweep and a short-TTL hija that must expire on time
	$(VX11CTL) smoke

status: ## every vx11 unit with its STATUS line, and a DB summary
	$(VX11CTL) status

logs: ## the last 100 journal lines of the daemons
	$(VX11CTL) logs -n 100

audit-rotate: ## what a rotation would do now (dry run, changes nothing)
	$(VX11CTL) rotate --dry-run

audit-rotate-do: ## rotate the audit dirs now, after a y/N question (CONFIRM=yes skips it)
	@if [ "$(CONFIRM)" = yes ]; then answer=y; else \
		read -r -p "Archive audit dirs older than rotate.keep_days and remove them? [y/N] " \
		answer || answer=n; fi; \
	case "$$answer" in [yY]*) $(VX11CTL) rotate ;; *) echo "not rotating"; exit 1 ;; esac

deps: apt $(STAMP) model ## apt packages, the virtualenv in .venv and the default model's wheel

# The default model's wheel (pinned sha256) into the cache outside the repo
# (/var/cache/vx11d as root, ~/.cache/vx11d otherwise): downloaded once, then reused.
model: $(STAMP) ## the default model's wheel, into the cache (vx11ctl model fetch --cache-only)
	$(VENV)/bin/vx11ctl model fetch --cache-only

# Installed for their programs only: the services these packages bring are neither
# started nor enabled when `make apt` installs them (see .ci/apt-install).
PROGRAMS_ONLY := nginx prometheus prometheus-alertmanager prometheus-node-exporter \
	systemd-journal-remote

apt: ## the apt packages the targets need (APT_PACKAGES)
	@sh .ci/apt-install --programs-only '$(PROGRAMS_ONLY)' $(APT_PACKAGES)

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

lint: deps ## ruff over the whole tree
	$(VENV)/bin/ruff check .

test: deps lint ## lint, then every test tier (unit, integration, system, fleet, host, vm)
	VX11_WHEELS=$(LLAMA_WHEELS) $(VENV)/bin/python -m pytest

unit: deps ## unit and integration tests only (no containers)
	$(VENV)/bin/python -m pytest tests/unit tests/integration

demo: deps ## boot a sandbox systemd and walk through the daemon set
	$(VENV)/bin/python -m vx11d.ctl.demo

bench-tools: apt ## the programs the benches run, installed and on PATH
	@missing=$$(for t in $(BENCH_TOOLS); do command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then echo "bench: not on PATH after 'make apt': $$missing" \
		"(add its package to APT_PACKAGES)" >&2; exit 1; fi

bench: deps bench-tools llama-server ## every bench/*.py --quick
	for b in bench/[!_]*.py; do VX11_LLAMA_SERVER_DIR=$(LLAMA_WHEELS) \
		VX11_WHEELS=$(LLAMA_WHEELS) $(VENV)/bin/python $$b --quick || exit 1; done

# llama.cpp's own llama-server, bench/hermes.py's peer: built once, beside the wheel it
# matches, from the very source the installed llama-cpp-python vendors (its sdist's
# vendor/llama.cpp) with the same flags; no network at build time (no prebuilt web UI).
llama-server: deps ## llama.cpp's llama-server for the bench (built once, cached beside the wheel)
	@ver=$$($(VENV)/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)') && \
	bin=$(LLAMA_WHEELS)/llama-server-$$ver && \
	if [ -x $$bin ]; then exit 0; fi && \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	echo "building $$bin (once; several minutes)" && \
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: -d $$tmp \
		llama-cpp-python==$$ver && \
	tar -xzf $$tmp/llama_cpp_python-$$ver.tar.gz -C $$tmp && \
	nice cmake -S $$tmp/llama_cpp_python-$$ver/vendor/llama.cpp -B $$tmp/build \
		-DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
		-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF >/dev/null && \
	nice cmake --build $$tmp/build --target llama-server -j $$(nproc) >/dev/null && \
	install -m 0755 $$tmp/build/bin/llama-server $$bin.tmp && mv $$bin.tmp $$bin

clean: ## take the sandbox down and remove the virtualenv and caches
	-$(VENV)/bin/vx11ctl sandbox down
	rm -rf $(VENV) .pytest_cache .ruff_cache
