# Set-up and entry points. Everything is idempotent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: deps venv check test test-unit test-component test-kernel fuzz demo bench clean install integration deb deb-deps man

deps:
	@sh scripts/install-deps.sh

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

## Everything: the checks, then the three tiers (docs/architecture.md "Tests"): unit (no
## process, no root, seconds), component (CLI processes, etcd, HTTP servers), kernel (root,
## network namespaces; skipped with the reason when not root). pytest's exit 5 (nothing
## collected) is not a failure.
test: venv check
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q tests/unit tests/component tests/kernel; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

## The layer contracts (import-linter, pyproject.toml), the linter and the type checker.
check: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check agent sandbox tests integration scripts/gen-config scripts/gen-manpages
	$(VENV)/bin/mypy agent

## The unit tier alone, hypothesis profile `dev` (a tenth of the examples; `make test`: all).
test-unit: venv
	$(PY) -m pytest -q tests/unit

test-component: venv
	$(PY) -m pytest -q tests/component

## Root only: the datapath through real kernels in network namespaces (tests/kernel).
test-kernel: venv
	$(PY) -m pytest -q tests/kernel

## The loader and validation fuzzed longer than in `make test` (200 examples a test):
## FUZZ_EXAMPLES (default 20,000) generated and mutated documents per test.
fuzz: venv
	SECGROUP_FUZZ_PROFILE=secgroup-fuzz $(PY) -m pytest -q tests/unit/test_model_fuzz.py

demo: venv
	$(PY) -m sandbox.demo examples/demo.yaml

## Root only: benchmarks that print figures (docs/performance.md); network namespaces only.
## ~10 min (datapath) + ~15 min (apply, up to 1,000 interfaces). BENCH_ARGS_DATAPATH /
## BENCH_ARGS_APPLY pass options, e.g. BENCH_ARGS_APPLY="--sizes 100 300".
bench: venv
	$(PY) bench/datapath.py $(BENCH_ARGS_DATAPATH)
	$(PY) bench/apply.py $(BENCH_ARGS_APPLY)

## Docker integration suite (integration/, docs/testing.md): installs and starts
## Docker if needed, builds the images (cached by content hash), runs the suite, and
## removes its containers also on failure.
integration: venv deb-deps
	@sh integration/host-setup.sh
	@$(PY) -c "import pytest_docker" 2>/dev/null || $(PY) -m pip install -q -e '.[integration]'
	@sh integration/build-images.sh
	p=$${SGIT_PROJECT:-sgit$$$$}; SGIT_PROJECT=$$p $(PY) -m pytest -q integration; rc=$$?; \
	    sh integration/cleanup.sh $$p; exit $$rc

## `make deb`: the Debian package in build/deb/ (docs/packaging.md); installs its build
## dependencies (Debian packages, the pinned wheels) first, then builds offline.
DEB_BUILD_DEPS := dpkg-dev debhelper fakeroot lintian python3-pip python3-venv git
deb-deps:
	@sh scripts/install-deps.sh $(DEB_BUILD_DEPS)
	@sh scripts/fetch-wheels.sh

deb: deb-deps
	sh scripts/build-deb.sh

## Regenerate man/ from the command line, the schema and docs/config.md (tests check it).
man: venv
	$(PY) scripts/gen-manpages

clean:
	rm -rf $(VENV) build *.egg-info

## `make install`: the daemon as a systemd service (docs/operations.md). PREFIX/DESTDIR aware.
PREFIX   ?= /opt/secgroup-agent
UNITDIR  ?= /etc/systemd/system
CONFDIR  ?= /etc/secgroup-agent
DESTDIR  ?=
INSTALL_ROOT := $(DESTDIR)$(PREFIX)

install: deps
	/usr/bin/python3 -m venv --system-site-packages $(INSTALL_ROOT)
	$(INSTALL_ROOT)/bin/python -m pip install -q --upgrade pip
	$(INSTALL_ROOT)/bin/python -m pip install -q .
	@if [ -n "$(DESTDIR)" ]; then \
	    grep -rlI -- "$(INSTALL_ROOT)" $(INSTALL_ROOT)/bin $(INSTALL_ROOT)/pyvenv.cfg | \
	    xargs -r sed -i "s|$(INSTALL_ROOT)|$(PREFIX)|g"; fi
	install -D -m 0644 docs/operations.md $(INSTALL_ROOT)/share/doc/operations.md
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed "s|/opt/secgroup-agent|$(PREFIX)|g" systemd/secgroup-agent.service \
	    > $(DESTDIR)$(UNITDIR)/secgroup-agent.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/secgroup-agent.service
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	@if [ -e $(DESTDIR)$(CONFDIR)/config.yaml ]; then \
	    echo "keeping the existing $(DESTDIR)$(CONFDIR)/config.yaml"; \
	else install -m 0600 systemd/config.example.yaml $(DESTDIR)$(CONFDIR)/config.yaml; fi
	install -m 0644 systemd/config.example.yaml $(DESTDIR)$(CONFDIR)/config.example.yaml
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	    systemctl daemon-reload; fi
	@echo "installed; start with: systemctl enable --now secgroup-agent"
