#!/usr/bin/env python3
"""A GitHub REST stand-in on 127.0.0.1 for the deployments endpoints, for local runs.

Serves, in memory:
    POST /repos/{owner}/{repo}/deployments                 -> 201 {"id": ...}
    GET  /repos/{owner}/{repo}/deployments?sha=&environment=
    POST /repos/{owner}/{repo}/deployments/{id}/statuses   -> 201 {"id": ..., "state": ...}
    GET  /repos/{owner}/{repo}/deployments/{id}/statuses
    GET  /repos/{owner}/{repo}/deployments/{id}
    POST /_local/reset                                      forget everything (the seeds come back)
It checks the headers GitHub requires (Authorization, Accept, X-GitHub-Api-Version) and the
required body fields, and records every call so a caller can print or assert them.

    gh = GitHubStandIn(on_call=print).start(); gh.url; gh.calls; gh.stop()
Run alone (`github_standin.py --port 8790 [--seed-samples]`) it serves until stopped and prints
each call. With --seed-samples (what `make watch` uses) it also knows the deployments that the
sample events in events/payloads/ refer to (id 145988746), so `make invoke
EVENT=events/deployment_created.json` works like a deployment the stand-in created itself.
Only the Python standard library is used.
"""
import argparse
import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from loopback_server import QuietThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DEPLOYMENTS = re.compile(r"^/repos/([^/]+/[^/]+)/deployments$")
STATUSES = re.compile(r"^/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses$")
DEPLOYMENT = re.compile(r"^/repos/([^/]+/[^/]+)/deployments/(\d+)$")
PAYLOADS = Path(__file__).resolve().parent.parent / "events" / "payloads"
STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}


class GitHubStandIn:
    def __init__(self, port=0, on_call=None, seed=()):
        self.port = port
        self.on_call = on_call
        self.seed = list(seed)  # deployments known from the start (and again after a reset)
        self.lock = threading.Lock()
        self.calls = []
        self.server = None
        self.reset()

    def reset(self):
        with self.lock:
            self.deployments = {d["id"]: dict(d) for d in self.seed}   # id -> deployment
            self.statuses = {}                                         # deployment id -> [status]
            self.ids = itertools.count(1000)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.server = QuietThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()

    def _record(self, method, path, body, status):
        call = {"method": method, "path": path, "body": body, "status": status}
        with self.lock:
            self.calls.append(call)
        if self.on_call:
            self.on_call(call)

    def _handler(self):
        gh = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def _reply(self, code, payload, body_in=None):
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                gh._record(self.command, self.path, body_in, code)

            def _check_headers(self):
                if not (self.headers.get("Authorization") or "").startswith(("Bearer ", "token ")):
                    return "Requires authentication"
                if self.headers.get("X-GitHub-Api-Version") not in (None, "2022-11-28"):
                    return "Unsupported API version"
                return None

            def do_GET(self):
                problem = self._check_headers()
                if problem:
                    return self._reply(401, {"message": problem})
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if m := DEPLOYMENTS.match(url.path):
                    with gh.lock:
                        found = [d for d in gh.deployments.values() if d["repo"] == m[1]
                                 and query.get("sha") in (None, d["sha"])
                                 and query.get("environment") in (None, d["environment"])]
                    return self._reply(200, sorted(found, key=lambda d: -d["id"]))
                if m := STATUSES.match(url.path):
                    with gh.lock:
                        found = list(reversed(gh.statuses.get(int(m[2]), [])))
                    return self._reply(200, found)
                if m := DEPLOYMENT.match(url.path):
                    with gh.lock:
                        dep = gh.deployments.get(int(m[2]))
                    if dep and dep["repo"] == m[1]:
                        return self._reply(200, dep)
                self._reply(404, {"message": "Not Found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/_local/reset":  # the stand-in's own control route, no GitHub headers
                    gh.reset()
                    return self._reply(200, {"deployments": sorted(gh.deployments)})
                problem = self._check_headers()
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    return self._reply(400, {"message": "Problems parsing JSON"})
                if problem:
                    return self._reply(401, {"message": problem}, body)
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if m := DEPLOYMENTS.match(self.path):
                    if not isinstance(body.get("ref"), str):
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "ref", "code": "missing_field"}]}, body)
                    if len(body.get("description") or "") > 140:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "description", "code": "too_long"}]}, body)
                    with gh.lock:
                        dep = {"id": next(gh.ids), "repo": m[1], "sha": body["ref"], "ref": body["ref"],
                               "task": body.get("task", "deploy"), "payload": body.get("payload", {}),
                               "environment": body.get("environment", "production"),
                               "description": body.get("description"), "creator": {"login": "deploy-bot"},
                               "created_at": now, "production_environment": body.get("production_environment")}
                        gh.deployments[dep["id"]] = dep
                    return self._reply(201, dep, body)
                if m := STATUSES.match(self.path):
                    deployment_id = int(m[2])
                    if deployment_id not in gh.deployments:
                        return self._reply(404, {"message": "Not Found"}, body)
                    if body.get("state") not in STATES:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "state", "code": "invalid"}]}, body)
                    with gh.lock:
                        status = {"id": next(gh.ids), "state": body["state"],
                                  "description": body.get("description", ""),
                                  "log_url": body.get("log_url", ""), "target_url": body.get("log_url", ""),
                                  "environment_url": body.get("environment_url", ""),
                                  "environment": gh.deployments[deployment_id]["environment"],
                                  "creator": {"login": "deploy-bot"}, "created_at": now, "updated_at": now}
                        gh.statuses.setdefault(deployment_id, []).append(status)
                    return self._reply(201, status, body)
                self._reply(404, {"message": "Not Found"}, body)

        return Handler


def sample_deployments():
    """The deployments the sample payloads in events/payloads/ refer to, as the stand-in keeps them."""
    found = {}
    for path in sorted(PAYLOADS.glob("deployment*.json")):
        payload = json.loads(path.read_text())
        dep, repo = payload.get("deployment"), (payload.get("repository") or {}).get("full_name")
        if not dep or not repo or dep["id"] in found:
            continue
        found[dep["id"]] = {"id": dep["id"], "repo": repo, "sha": dep["sha"], "ref": dep["ref"],
                            "task": dep.get("task", "deploy"), "payload": dep.get("payload", {}),
                            "environment": dep["environment"], "description": dep.get("description"),
                            "creator": {"login": (dep.get("creator") or {}).get("login", "deploy-bot")},
                            "created_at": dep.get("created_at"),
                            "production_environment": dep.get("production_environment")}
    return list(found.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="GitHub deployments API stand-in")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--seed-samples", action="store_true",
                        help="also know the deployments the sample events in events/payloads/ refer to")
    args = parser.parse_args()
    seed = sample_deployments() if args.seed_samples else []
    gh = GitHubStandIn(port=args.port, seed=seed, on_call=lambda c: print(
        f"GitHub <- {c['method']} {c['path']} -> {c['status']} {json.dumps(c['body']) if c['body'] else ''}",
        flush=True)).start()
    known = f" (knows sample deployment {', '.join(str(d['id']) for d in seed)})" if seed else ""
    print(f"GitHub stand-in on {gh.url}{known}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
