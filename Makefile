# deploy-webhook: the commands a developer and CI use. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# The project's Python tools (local DynamoDB server, template linters), reinstalled only when
# tools/requirements.txt changes.
$(STAMP): tools/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	@touch $@

.PHONY: venv
venv: $(STAMP) ## install the Python tools into .venv

.PHONY: lint
lint: ## rustfmt and clippy, warnings denied
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

.PHONY: test
test: $(STAMP) lint ## everything CI checks: lint, unit and integration tests
	cargo test --locked --all-targets
