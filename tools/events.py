#!/usr/bin/env python3
"""Builds the sample API Gateway events in events/ from the GitHub payloads in events/payloads/,
signed as GitHub signs them (X-Hub-Signature-256 = HMAC-SHA256 of the body with the secret).

    tools/events.py                 rebuild every events/*.json (what `make events` runs)
    tools/events.py sign FILE...    re-sign events you edited by hand (the signature is computed
                                    over the event's body, decoded first if isBase64Encoded); keep
                                    your own events in events/local/ (git-ignored): events/ holds
                                    the shipped ones, each checked by make test
    tools/events.py --help          this text

Each event's X-GitHub-Delivery is derived from its name and body: rebuilding or re-signing an
unchanged event keeps its id (so invoking it again is a redelivery, answered `duplicate`), and an
edited event gets a fresh id, so the function treats it as a new delivery. (A new delivery of the
same merge or deployment is still `duplicate`: change the PR number or deployment id too, or
`make reset` the local state.)

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
    # Comment commands on pull request #3 (open), each its own comment id, by octocat (a User).
    "issue_comment_lock": ("issue_comment", "issue_comment.lock", {}),
    "issue_comment_unlock": ("issue_comment", "issue_comment.unlock", {}),
    "issue_comment_rollback": ("issue_comment", "issue_comment.rollback", {}),
    "issue_comment_status": ("issue_comment", "issue_comment.status", {}),
    "issue_comment_help": ("issue_comment", "issue_comment.help", {}),
    "issue_comment_deploy_staging": ("issue_comment", "issue_comment.deploy_staging", {}),
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


def delivery_id(name, body=b""):
    """A GUID like GitHub's, derived from the case name and the exact body: stable while the
    event is unchanged, fresh as soon as its body changes."""
    digest = hashlib.sha256(name.encode() + b"\0" + body).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-11e3-{digest[12:16]}-{digest[16:28]}"


def encoded_body(payload, form=False):
    json_body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if form:
        return urllib.parse.urlencode({"payload": json_body}).encode(), "application/x-www-form-urlencoded"
    return json_body.encode(), "application/json"


def api_gateway_event(event, payload, delivery, secret=None, form=False, base64_body=False, fmt="v2",
                      signing_secret=None):
    """An API Gateway event carrying one GitHub delivery (HTTP API v2, REST v1 or function URL)."""
    body, content_type = encoded_body(payload, form)
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
        payload = load_payload(payload_file)
        body, _ = encoded_body(payload, opts.get("form", False))
        ev = api_gateway_event(event, payload, delivery_id(name, body),
                               form=opts.get("form", False), base64_body=opts.get("base64", False),
                               fmt=opts.get("format", "v2"), signing_secret=opts.get("secret"))
        (out / f"{name}.json").write_text(json.dumps(ev, indent=2) + "\n")
        print(f"events/{name}.json")


def resign(paths):
    for path in paths:
        p = Path(path)
        if p.resolve().parent == (ROOT / "events").resolve() and p.stem not in CASES:
            sys.exit(f"{path}: events/ holds only the events the project ships (make test checks each one). "
                     f"Put your own in events/local/ (git-ignored): mkdir -p events/local && "
                     f"mv {path} events/local/, then sign it there")
        ev = json.loads(p.read_text())
        body = ev.get("body") or ""
        raw = base64.b64decode(body) if ev.get("isBase64Encoded") else body.encode()
        headers = ev.setdefault("headers", {})
        key = next((k for k in headers if k.lower() == "x-hub-signature-256"), "x-hub-signature-256")
        headers[key] = signature(default_secret(), raw)
        # A fresh delivery id when the body changed (stable when it did not), so an edit is seen.
        id_key = next((k for k in headers if k.lower() == "x-github-delivery"), "x-github-delivery")
        old_id = headers.get(id_key)
        headers[id_key] = delivery_id(p.stem, raw)
        for k in (key, id_key):
            if ev.get("multiValueHeaders") is not None:
                ev["multiValueHeaders"][k] = [headers[k]]
        p.write_text(json.dumps(ev, indent=2) + "\n")
        fresh = "" if old_id == headers[id_key] else f", new X-GitHub-Delivery {headers[id_key]}"
        print(f"signed {p}{fresh}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"], ["help"]):
        print(__doc__)
    elif args[:1] == ["sign"] and args[1:]:
        resign(args[1:])
    elif not args:
        build_all()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
