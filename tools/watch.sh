#!/usr/bin/env bash
# `make watch`: a local DynamoDB and GitHub stand-in on the ports .env names, then
# `cargo lambda watch` with .env. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
set -a; . ./.env; set +a
ddb_port="${AWS_ENDPOINT_URL_DYNAMODB##*:}"
gh_port="${GITHUB_API_URL##*:}"
.venv/bin/python tools/local_dynamodb.py --port "$ddb_port" --table "$DEPLOYMENTS_TABLE" &
ddb=$!
.venv/bin/python tools/github_standin.py --port "$gh_port" &
gh=$!
trap 'kill $ddb $gh 2>/dev/null || true' EXIT
echo "local DynamoDB on :$ddb_port, GitHub stand-in on :$gh_port; now: make invoke EVENT=events/ping.json"
cargo lambda watch --env-file .env
