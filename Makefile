# deploy-webhook: the commands a developer and CI use. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# The SAM CLI sends no telemetry from any target here.
export SAM_CLI_TELEMETRY := 0

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# The project's Python tools (local DynamoDB server, template linters), reinstalled only when
# tools/requirements.txt changes.
$(STAMP): tools/requirements.txt
	@echo "installing the Python tools into .venv (a few minutes, once; again only when tools/requirements.txt changes) ..."
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r tools/requirements.txt
	@touch $@
	@echo "the Python tools are installed in .venv"


.PHONY: venv
venv: $(STAMP) ## install the Python tools into .venv

.PHONY: lint
lint: ## rustfmt and clippy, warnings denied
	cargo fmt --all -- --check
	cargo clippy --all-targets --locked -- -D warnings

.PHONY: test
test: $(STAMP) lint template-check audit ## everything CI checks: lint, template checks, the dependency audit, unit and integration tests, no secret on the terminal
	cargo test --locked --all-targets
	@# after cargo test, which leaves the debug binary built, so the checks do not wait for a build
	$(MAKE) --no-print-directory secrets-check
	$(MAKE) --no-print-directory iam-check

# The whole local flow of `make run`, in token and App mode, with IAM enforced by the local
# DynamoDB and the function running as a role with exactly template.yaml's policy
# (tools/iam_check.py); fails on any AccessDenied, and if removing an action or the index ARN
# from the policy would go unnoticed. Uses the debug binary (cargo test built it).
.PHONY: iam-check
iam-check: $(STAMP) ## make run's flow (token and App mode) as a role with exactly template.yaml's IAM policy
	cargo build --locked --quiet --bin deploy-webhook
	@mkdir -p .run
	@for mode in "" "--app"; do \
	  if $(PY) tools/demo.py --iam $$mode --binary target/debug/deploy-webhook > .run/iam-check$$mode.log 2>&1; then \
	    echo "iam-check$${mode:+ ($$mode)}: ok: the whole flow ran under template.yaml's policy (.run/iam-check$$mode.log)"; \
	  else \
	    tail -40 .run/iam-check$$mode.log; echo "iam-check$${mode:+ ($$mode)}: FAILED (.run/iam-check$$mode.log)"; exit 1; \
	  fi; \
	done

# The dependency audit: cargo-audit (installed once per version into $(TOOLS_ROOT), from crates.io,
# --locked; outside the clone, so that a fresh clone on the same machine, as CI's, reuses it)
# against the RustSec advisory database snapshot in ../shared/advisory-db, offline.
# Vulnerabilities fail it, and so do unsound, unmaintained and yanked crates (--deny warnings);
# an advisory we accept on purpose is listed, with why, in .cargo/audit.toml.
CARGO_AUDIT_VERSION := 0.22.2
TOOLS_ROOT  ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/deploy-webhook/tools
ADVISORY_DB ?= $(CURDIR)/../shared/advisory-db
CARGO_AUDIT := $(TOOLS_ROOT)/bin/cargo-audit
AUDIT_STAMP := $(TOOLS_ROOT)/.cargo-audit-$(CARGO_AUDIT_VERSION)

$(AUDIT_STAMP):
	cargo install --locked --quiet --no-default-features cargo-audit --version $(CARGO_AUDIT_VERSION) --root $(TOOLS_ROOT)
	@touch $@

.PHONY: audit
audit: $(AUDIT_STAMP) ## cargo audit of Cargo.lock against ../shared/advisory-db (offline), warnings denied
	$(CARGO_AUDIT) audit --db $(ADVISORY_DB) --no-fetch --deny warnings

# `make watch` with sentinel secrets and RUST_LOG=trace in the shell: events through the real
# function, Ctrl-C, and no sentinel may appear in anything printed. Bounded (kills after 90 s of
# running, plus the debug build if it is missing); loopback only.
.PHONY: secrets-check
secrets-check: $(STAMP) ## no secret from .env reaches the terminal through make watch / make invoke
	$(PY) tools/check_watch_secrets.py

# ---------------------------------------------------------------- running it locally

# APP=1: the same flow with the function authenticating as a GitHub App (a key generated for the
# run), plus one token per installation and a failed delivery redelivered by the sweep.
APP ?=
.PHONY: run
# It runs the debug build (the dev profile): the binary make watch and make test's checks use
# too, so one build serves the three. The shipping profile (fat LTO, one codegen unit: several
# times longer to build) is for make build and make bench only.
run: $(STAMP) ## the whole flow locally: sample events through the real function, local DynamoDB and GitHub (APP=1: as a GitHub App; IAM=1: as a role with exactly template.yaml's policy)
	@test -x target/debug/deploy-webhook || echo "building the function (the debug build; the first time takes minutes, see the README) ..."
	cargo build --locked --bin deploy-webhook
	$(PY) tools/demo.py --binary target/debug/deploy-webhook$(if $(filter 1,$(APP)), --app)$(if $(filter 1,$(IAM)), --iam)

.PHONY: events
events: ## rebuild and re-sign events/*.json from events/payloads/ (secret: $GITHUB_WEBHOOK_SECRET or the sample)
	python3 tools/events.py

# make watch / invoke / reset settings: ENV_FILE (the function's settings), WATCH_PORT (cargo
# lambda watch's port), INVOKE_TIMEOUT (seconds make invoke waits for an answer), SWEEP_EVERY
# (seconds between the scheduled sweeps make watch sends the function; 0: none).
ENV_FILE       ?= .env
WATCH_PORT     ?= 9000
INVOKE_TIMEOUT ?= 120
SWEEP_EVERY    ?= 60
export ENV_FILE WATCH_PORT INVOKE_TIMEOUT SWEEP_EVERY

.env:
	cp .env.example .env
	@echo "created .env from .env.example"

.PHONY: watch
watch: $(STAMP) $(ENV_FILE) ## cargo lambda watch with .env, plus a local DynamoDB, GitHub and deploy-hook stand-in
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" tools/watch.sh

.PHONY: invoke
invoke: $(STAMP) ## send one event to `make watch`: make invoke EVENT=events/ping.json
	@test -n "$(EVENT)" || { echo "usage: make invoke EVENT=events/<file>.json" >&2; exit 2; }
	@$(PY) tools/watch.py invoke "$(EVENT)"

.PHONY: reset
reset: $(STAMP) ## forget what `make watch` stored: empty the local table and the GitHub stand-in
	@$(PY) tools/watch.py reset

# ---------------------------------------------------------------- AWS

# Creates the GitHub App from github-app-manifest.json (GitHub's manifest flow, in your browser);
# writes its key and webhook secret to .run/github-app/ (mode 0600, never printed).
# ORG=<organization> (default: your account); WEBHOOK_URL=<the WebhookUrl output> if deployed.
.PHONY: app-manifest
app-manifest: ## create the GitHub App from github-app-manifest.json in your browser (ORG=…, WEBHOOK_URL=…)
	python3 tools/github_app_manifest.py $(if $(ORG),--org '$(ORG)') $(if $(WEBHOOK_URL),--webhook-url '$(WEBHOOK_URL)')

.PHONY: build
build: $(STAMP) ## the arm64 Lambda artifact (target/lambda/deploy-webhook/bootstrap.zip), and its size
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cargo lambda build --release --arm64 --output-format zip --locked
	@ls -l target/lambda/deploy-webhook/bootstrap.zip | awk '{printf "bootstrap.zip: %.2f MB (%d bytes)\n", $$5/1048576, $$5}'

.PHONY: template-check
template-check: $(STAMP) ## lint template.yaml offline (cfn-lint, sam validate --lint, and its role, edge and secrets: tools/check_template.py)
	$(VENV)/bin/cfn-lint template.yaml
	AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=offline AWS_SECRET_ACCESS_KEY=offline \
	  $(VENV)/bin/sam validate --lint --template-file template.yaml
	$(PY) tools/check_template.py

# DEPLOY_ARGS goes to sam deploy, e.g. DEPLOY_ARGS='--parameter-overrides LogLevel=DEBUG'
# (parameters not named keep their deployed values; NoEcho ones are shown as *****).
DEPLOY_ARGS ?=
.PHONY: deploy
deploy: $(STAMP) ## sam build + sam deploy (guided the first time, when samconfig.toml is missing; DEPLOY_ARGS=...)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sam build
	if [ -f samconfig.toml ]; then PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sam deploy $(DEPLOY_ARGS); \
	else PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sam deploy --guided $(DEPLOY_ARGS); fi

# ---------------------------------------------------------------- reliability

.PHONY: chaos
chaos: $(STAMP) ## the chaos test at length (CHAOS_PRS=200; replay a run with CHAOS_SEED=<seed>)
	CHAOS_PRS=$${CHAOS_PRS:-200} cargo test --locked --test chaos -- --nocapture

# EXPLORE_RUNS caps each exhaustive scope (a scope that ends sooner is complete); EXPLORE_SEEDS is
# the number of seeded random runs per larger scope; EXPLORE_SCOPE=<words> runs only the scopes
# whose name contains them. `make test` runs 10000 and 300.
.PHONY: explore
explore: ## the run engine's deterministic explorer at length (EXPLORE_RUNS=300000 EXPLORE_SEEDS=20000)
	EXPLORE_RUNS=$${EXPLORE_RUNS:-300000} EXPLORE_SEEDS=$${EXPLORE_SEEDS:-20000} \
		cargo test --locked --test explorer -- --nocapture --test-threads 2

# ---------------------------------------------------------------- performance

.PHONY: bench
bench: $(STAMP) ## cold start, warm cost, memory, calls and zip size vs the floor and the Python peer → docs/BENCHMARKS.md
	$(PY) tools/bench.py
