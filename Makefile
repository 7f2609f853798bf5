# Set-up and entry points. Everything is idempotent.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: deps venv test test-unit test-kernel demo bench clean

deps:
	@sh scripts/install-deps.sh

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

## Everything: unit tests (no root) and kernel tests (root, network namespaces).
test: venv
	$(PY) -m pytest -q tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-unit: venv
	$(PY) -m pytest -q -m "not kernel" tests

demo: venv
	$(PY) -m agent.demo examples/demo.yaml

clean:
	rm -rf $(VENV) build *.egg-info
