# steerd — `make demo` and `make test` install what they need, then run.
VENV      ?= .venv
PY        := $(VENV)/bin/python
KVER      := $(shell uname -r)
APT_PKGS  := python3-bpfcc bpfcc-tools python3-venv iproute2 nftables iperf3 iputils-ping \
             prometheus systemd shellcheck
STAMP     := $(VENV)/.installed

VM_VENV   ?= /opt/steerd-vm

.PHONY: all deps venv demo test test-unit test-kernel test-vm bench lint clean

all: test

# System packages and the kernel-header link bcc needs (idempotent).
deps:
	@scripts/install-deps.sh $(APT_PKGS)

$(STAMP): pyproject.toml setup.py
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

demo: venv
	$(PY) -m steerd.lab demo

test: venv
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q -m kernel tests/kernel
	scripts/check-clean.sh
	$(MAKE) test-vm

# Real kernel (qemu, software emulation): XFRM interfaces, ESP, strongSwan, netem.
test-vm: venv
	scripts/vm-lint.sh
	VM_VENV=$(VM_VENV) scripts/vm-setup.sh
	VM_VENV=$(VM_VENV) scripts/vm-run.sh

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-kernel: venv
	$(PY) -m pytest -q -m kernel tests/kernel

# Every executable in tests/bench; exits 1 if any bench fails or misses a goal.
# Writes docs/bench/report.{md,png} (matplotlib, installed here into the venv).
# BENCH=name,name runs only those.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q 'matplotlib>=3.6'
	touch $(BENCH_STAMP)

bench: venv $(BENCH_STAMP)
	$(PY) tests/bench/run_all.py $(if $(BENCH),--only $(BENCH))

lint:
	shellcheck deploy/install.sh deploy/steerd-stop-post scripts/*.sh
	promtool check rules deploy/prometheus/alerts.yml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
