#!/usr/bin/env bash
# `make watch`: the local DynamoDB, GitHub and deploy-hook stand-ins that .env points at, then
# `cargo lambda watch` with .env; Ctrl-C stops everything. The work is in tools/watch.py, which
# never exports .env into cargo-lambda's environment (see its header for why).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python tools/watch.py watch "$@"
