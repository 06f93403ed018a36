# Herald: the two commands a new machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean softhsm

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Herald needs Python 3.11 or newer"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv' and retry"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP) softhsm
	$(BIN)/herald serve --demo

test: $(STAMP) softhsm
	$(BIN)/python -m pytest -q

# The PKCS#11 escrow is tested against SoftHSM2. Install it when missing: as root with apt-get,
# otherwise through sudo without a password prompt (-n). Failing that, the tests say loudly
# that they skipped the PKCS#11 backend; nothing else is skipped.
softhsm:
	@command -v softhsm2-util >/dev/null 2>&1 || { \
	  echo "softhsm2 is missing; installing it (needed by the PKCS#11 escrow tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; \
	  else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q softhsm2 >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q softhsm2 >/dev/null 2>&1; }; \
	  fi; \
	  command -v softhsm2-util >/dev/null 2>&1 || echo "WARNING: could not install softhsm2 \
	(not root, and no password-less sudo): the PKCS#11 escrow tests will be SKIPPED. \
	Run 'sudo apt-get install softhsm2' and then 'make test' again."; \
	}

lint: $(STAMP)
	$(BIN)/ruff check engine appliance admin_console tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/engine_append.py

clean:
	rm -rf $(VENV) build *.egg-info
