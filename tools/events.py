#!/usr/bin/env python3
"""Builds the sample API Gateway events in events/ from the GitHub payloads in events/payloads/,
signed as GitHub signs them (X-Hub-Signature-256 = HMAC-SHA256 of the body with the secret).

    tools/events.py                 rebuild every events/*.json (what `make events` runs)
    tools/events.py sign FILE...    re-sign events you edited by hand (the signature is computed
                                    over the event's body, decoded first if isBase64Encoded)

The secret is $GITHUB_WEBHOOK_SECRET (the first of a comma-separated list), else the sample
secret `sample-webhook-secret` that .env.example uses. Only the Python standard library is used.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "events" / "payloads"
SAMPLE_SECRET = "sample-webhook-secret"

# name: (X-GitHub-Event, payload file, options)
CASES = {
    "ping": ("ping", "ping", {}),
    "pull_request_merged": ("pull_request", "pull_request.merged", {}),
    "pull_request_merged_no_rule": ("pull_request", "pull_request.merged_no_rule", {}),
    "pull_request_closed_unmerged": ("pull_request", "pull_request.closed_unmerged", {}),
    "pull_request_opened": ("pull_request", "pull_request.opened", {}),
    "deployment_created": ("deployment", "deployment.created", {}),
    "deployment_status_success": ("deployment_status", "deployment_status.success", {}),
    "deployment_status_failure": ("deployment_status", "deployment_status.failure", {}),
    "issues_opened_ignored": ("issues", "issues.opened", {}),
    "pull_request_merged_form": ("pull_request", "pull_request.merged", {"form": True}),
    "pull_request_merged_base64": ("pull_request", "pull_request.merged", {"base64": True}),
    "bad_signature": ("pull_request", "pull_request.merged", {"secret": "not-the-secret"}),
    "rest_v1_ping": ("ping", "ping", {"format": "v1"}),
    "function_url_ping": ("ping", "ping", {"format": "url"}),
}


def default_secret():
    return (os.environ.get("GITHUB_WEBHOOK_SECRET") or SAMPLE_SECRET).split(",")[0].strip()


def signature(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_id(name):
    # Stable per case, so rebuilding the events changes nothing unless a payload changed.
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-11e3-{digest[12:16]}-{digest[16:28]}"


def api_gateway_event(event, payload, delivery, secret=None, form=False, base64_body=False, fmt="v2",
                      signing_secret=None):
    """An API Gateway event carrying one GitHub delivery (HTTP API v2, REST v1 or function URL)."""
    json_body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if form:
        body = urllib.parse.urlencode({"payload": json_body}).encode()
        content_type = "application/x-www-form-urlencoded"
    else:
        body = json_body.encode()
        content_type = "application/json"
    headers = {
        "content-type": content_type,
        "user-agent": "GitHub-Hookshot/044aadd",
        "x-github-event": event,
        "x-github-delivery": delivery,
        "x-github-hook-id": "292430182",
        "x-hub-signature-256": signature(signing_secret or secret or default_secret(), body),
    }
    text = base64.b64encode(body).decode() if base64_body else body.decode()
    if fmt == "v1":
        # REST API events keep header names as sent.
        headers = {"-".join(p.capitalize() for p in k.split("-")).replace("Github", "GitHub"): v
                   for k, v in headers.items()}
        return {
            "resource": "/webhook", "path": "/webhook", "httpMethod": "POST",
            "headers": headers, "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": None, "stageVariables": None,
            "requestContext": {
                "accountId": "123456789012", "apiId": "abc123", "resourceId": "r1", "stage": "prod",
                "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "resourcePath": "/webhook",
                "httpMethod": "POST", "path": "/prod/webhook", "protocol": "HTTP/1.1",
                "identity": {"sourceIp": "192.30.252.44", "userAgent": "GitHub-Hookshot/044aadd"},
                "requestTimeEpoch": 1795460400000,
            },
            "body": text, "isBase64Encoded": base64_body,
        }
    domain = "abcdefg.lambda-url.us-east-1.on.aws" if fmt == "url" else "abc123.execute-api.us-east-1.amazonaws.com"
    return {
        "version": "2.0", "routeKey": "$default" if fmt == "url" else "POST /webhook",
        "rawPath": "/webhook", "rawQueryString": "", "headers": headers,
        "requestContext": {
            "accountId": "123456789012" if fmt != "url" else "anonymous", "apiId": domain.split(".")[0],
            "domainName": domain, "domainPrefix": domain.split(".")[0],
            "http": {"method": "POST", "path": "/webhook", "protocol": "HTTP/1.1",
                     "sourceIp": "192.30.252.44", "userAgent": "GitHub-Hookshot/044aadd"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "routeKey": "$default" if fmt == "url" else "POST /webhook",
            "stage": "$default", "time": "22/Nov/2026:19:00:00 +0000", "timeEpoch": 1795460400000,
        },
        "body": text, "isBase64Encoded": base64_body,
    }


def load_payload(name):
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def build_all():
    out = ROOT / "events"
    for name, (event, payload_file, opts) in CASES.items():
        ev = api_gateway_event(event, load_payload(payload_file), delivery_id(name),
                               form=opts.get("form", False), base64_body=opts.get("base64", False),
                               fmt=opts.get("format", "v2"), signing_secret=opts.get("secret"))
        (out / f"{name}.json").write_text(json.dumps(ev, indent=2) + "\n")
        print(f"events/{name}.json")


def resign(paths):
    for path in paths:
        p = Path(path)
        ev = json.loads(p.read_text())
        body = ev.get("body") or ""
        raw = base64.b64decode(body) if ev.get("isBase64Encoded") else body.encode()
        headers = ev.setdefault("headers", {})
        key = next((k for k in headers if k.lower() == "x-hub-signature-256"), "x-hub-signature-256")
        headers[key] = signature(default_secret(), raw)
        if "multiValueHeaders" in ev and ev["multiValueHeaders"] is not None:
            ev["multiValueHeaders"][key] = [headers[key]]
        p.write_text(json.dumps(ev, indent=2) + "\n")
        print(f"signed {p}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sign":
        resign(sys.argv[2:])
    elif len(sys.argv) > 1:
        print(__doc__)
        sys.exit(2)
    else:
        build_all()
