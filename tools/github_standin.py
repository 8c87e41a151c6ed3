#!/usr/bin/env python3
"""A GitHub REST stand-in on 127.0.0.1 for the endpoints the function calls, for local runs.

Serves, in memory:
    POST /repos/{owner}/{repo}/deployments                 -> 201 {"id": ...}
    GET  /repos/{owner}/{repo}/deployments?sha=&environment=
    POST /repos/{owner}/{repo}/deployments/{id}/statuses   -> 201 {"id": ..., "state": ...}
    GET  /repos/{owner}/{repo}/deployments/{id}/statuses
    GET  /repos/{owner}/{repo}/deployments/{id}
    GET  /repos/{owner}/{repo}/collaborators/{user}/permission
                                                            -> 200 {"permission", "role_name", "user"}
                                                            from `gh.permissions` (user -> admin,
                                                            maintain, write, triage, read or none),
                                                            else `default_permission` ("write");
                                                            a user mapped to None: 404
    GET  /repos/{owner}/{repo}/pulls/{number}              -> 200 {"number", "state", "head": {"sha",
                                                            "ref", "repo": {"full_name"}}} from
                                                            `gh.pulls`, else 404
    POST /repos/{owner}/{repo}/issues/comments/{id}/reactions {"content"}
                                                            -> 201; kept in `gh.reactions`
    POST /repos/{owner}/{repo}/issues/{number}/comments {"body"}
                                                            -> 201; kept in `gh.comments`
    POST /_local/reset                                      forget everything (the seeds come back)
It checks the headers GitHub requires (Authorization, Accept, X-GitHub-Api-Version) and the
required body fields (a deployment's `required_contexts`, when given, must be a list of strings;
it is kept on the deployment), and records every call so a caller can print or assert them.

    gh = GitHubStandIn(on_call=print).start(); gh.url; gh.calls; gh.stop()

GitHub App mode (`GitHubStandIn(app=StandInApp(app_id, public_key), installations={id: [repo]})`,
what `make run APP=1` uses) adds the App's endpoints, authenticated as GitHub does it:
    POST /app/installations/{id}/access_tokens  App JWT -> 201 {"token", "expires_at" (1 h ahead)}
    GET  /repos/{owner}/{repo}/installation     App JWT -> 200 {"id": ...} or 404
    GET  /app/hook/deliveries?per_page=&cursor= App JWT -> the App webhook's deliveries, newest
                                                first, paged by cursor (Link: <...>; rel="next")
    POST /app/hook/deliveries/{id}/attempts     App JWT -> 202; re-sends that delivery (same guid,
                                                redelivery: true) to `gh.hook_target`, as GitHub does
The App JWT is verified with the App's public key: RS256, `iss` the App id, `iat` not in the
future, `exp` in the future and at most 10 minutes after `iat` (401 otherwise). Every
deployments and statuses call must then carry `Bearer <an unexpired token this stand-in issued>`
for an installation that has the repository (401 / 403 otherwise). The App webhook's deliveries
are what the caller sent through `gh.deliver(event)` (the caller plays GitHub's sending side:
`hook_target(event)` is invoked and its answer recorded, as GitHub records each attempt).
Without `app`, none of this exists and any `Bearer`/`token` Authorization is accepted.
Run alone (`github_standin.py --port 8790 [--seed-samples]`) it serves until stopped and prints
each call. With --seed-samples (what `make watch` uses) it also knows the deployments that the
sample events in events/payloads/ refer to (id 145988746), so `make invoke
EVENT=events/deployment_created.json` works like a deployment the stand-in created itself, and
the pull request the sample comment events are on (#3, open, from a branch of the same
repository), so `.deploy to <env>` finds its head.
Only the Python standard library is used.
"""
import argparse
import base64
import calendar
import hashlib
import http
import itertools
import json
import os
import re
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from loopback_server import QuietThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DEPLOYMENTS = re.compile(r"^/repos/([^/]+/[^/]+)/deployments$")
# Who the function's statuses are created by: the token's user or, in App mode, the App's bot
# (GET /user and GET /app say so).
BOT_LOGIN = "deploy-bot"
APP_BOT = "deploy-webhook-local[bot]"
STATUSES = re.compile(r"^/repos/([^/]+/[^/]+)/deployments/(\d+)/statuses$")
DEPLOYMENT = re.compile(r"^/repos/([^/]+/[^/]+)/deployments/(\d+)$")
ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ROOT / "events" / "payloads"
STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}
ACCESS_TOKENS = re.compile(r"^/app/installations/(\d+)/access_tokens$")
REPO_INSTALLATION = re.compile(r"^/repos/([^/]+/[^/]+)/installation$")
HOOK_DELIVERIES = "/app/hook/deliveries"
HOOK_ATTEMPTS = re.compile(r"^/app/hook/deliveries/(\d+)/attempts$")
PERMISSION = re.compile(r"^/repos/([^/]+/[^/]+)/collaborators/([^/]+)/permission$")
PULL = re.compile(r"^/repos/([^/]+/[^/]+)/pulls/(\d+)$")
REACTIONS = re.compile(r"^/repos/([^/]+/[^/]+)/issues/comments/(\d+)/reactions$")
ISSUE_COMMENTS = re.compile(r"^/repos/([^/]+/[^/]+)/issues/(\d+)/comments$")
CONTENTS = re.compile(r"^/repos/([^/]+/[^/]+)/contents/(.+)$")
CHECK_RUNS = re.compile(r"^/repos/([^/]+/[^/]+)/check-runs$")


def blob_sha(data):
    """Git's blob id of `data`: what the contents API answers as `sha`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
REACTION_CONTENTS = {"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}
# permission -> (the `permission` GitHub answers, its `role_name`): maintain reads as write,
# triage as read, as GitHub's endpoint does.
ROLES = {"admin": ("admin", "admin"), "maintain": ("write", "maintain"), "write": ("write", "write"),
         "triage": ("read", "triage"), "read": ("read", "read"), "none": ("none", "")}
TOKEN_LIFETIME_S = 3600


def iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def b64url(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class StandInApp:
    """A GitHub App as the stand-in knows it: its id and public key (a `cryptography` RSA public
    key). Only App mode needs the `cryptography` package."""

    def __init__(self, app_id, public_key):
        self.app_id = int(app_id)
        self.public_key = public_key

    def check_jwt(self, jwt, now=None):
        """None if `jwt` is a valid App JWT for this App, else why not (GitHub's 401 message)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        now = time.time() if now is None else now
        try:
            head, body, sig = jwt.split(".")
            header, claims = json.loads(b64url(head)), json.loads(b64url(body))
            signature = b64url(sig)
        except ValueError:
            return "A JSON web token could not be decoded"
        if header.get("alg") != "RS256":
            return f"'alg' must be RS256, got {header.get('alg')!r}"
        try:
            self.public_key.verify(signature, f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "A JSON web token could not be decoded (bad signature)"
        if str(claims.get("iss")) != str(self.app_id):
            return f"'iss' must be the App id {self.app_id}, got {claims.get('iss')!r}"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return "'iat' and 'exp' must be whole numbers (Unix seconds)"
        if iat > now + 30:
            return "'Issued at' claim ('iat') must be an Integer representing a time in the past"
        if exp <= now:
            return "'Expiration time' claim ('exp') is too far in the past"
        if exp - iat > 600 or exp > now + 600:
            return "'Expiration time' claim ('exp') is too far in the future (at most 10 minutes)"
        return None


class GitHubStandIn:
    def __init__(self, port=0, on_call=None, seed=(), app=None, installations=None, page_size=100,
                 hook_target=None, pulls=(), permissions=None, default_permission="write", files_dir=None):
        self.port = port
        self.on_call = on_call
        self.seed = list(seed)  # deployments known from the start (and again after a reset)
        self.seed_pulls = list(pulls)  # pull requests known from the start (and after a reset)
        # user -> permission on every repository (a setting, kept across resets); None: 404
        self.permissions = dict(permissions or {})
        self.default_permission = default_permission
        self.app = app          # a StandInApp: GitHub App mode
        # installation id -> the repositories it was installed on (App mode)
        self.installations = {int(k): list(v) for k, v in (installations or {}).items()}
        self.page_size = page_size  # the most deliveries per page, whatever per_page asks (GitHub: 100)
        self.hook_target = hook_target  # event -> API Gateway response: where deliveries go
        # A folder served as repositories' default branches: <files_dir>/<owner>/<repo>/<path>,
        # read at each request (so an edit applies at once); files set by set_file() come first.
        self.files_dir = Path(files_dir) if files_dir else None
        self.on_deployment = None  # called with each deployment created (outside the lock)
        self.lock = threading.Lock()
        self.calls = []
        self.server = None
        self.reset()

    def reset(self):
        with self.lock:
            self.deployments = {d["id"]: dict(d) for d in self.seed}   # id -> deployment
            self.pulls = {(p["repo"], p["number"]): dict(p) for p in self.seed_pulls}  # (repo, n) -> pull
            self.reactions = []          # {"repo", "comment_id", "content"}, in order
            self.comments = []           # {"repo", "issue", "id", "body"}, the bot's replies in order
            self.comment_ids = itertools.count(1515100001)  # reactions' and replies' ids (not deployments')
            self.statuses = {}                                         # deployment id -> [status]
            self.ids = itertools.count(1000)
            self.tokens = {}             # token -> {"installation", "expires_at"} (App mode)
            self.token_requests = []     # installation ids, one per token issued
            self.token_scopes = []       # {"installation", "repositories", "permissions"} asked, per token
            self.hook_deliveries = []    # the App webhook's delivery attempts, GitHub's shape
            self.redeliveries = []       # delivery ids whose redelivery was asked for
            self.delivery_ids = itertools.count(90000001)
            self._events = {}            # delivery id -> the event it carried
            self.files = {}              # (repo, path, ref or None) -> text: what set_file() serves
            self.check_runs = []         # the check runs created, in order

    def set_file(self, repo, path, text, ref=None):
        """Serves `text` as `repo`'s `path` on its default branch (ref None) or at `ref`; None deletes it."""
        with self.lock:
            if text is None:
                self.files.pop((repo, path, ref), None)
            else:
                self.files[(repo, path, ref)] = text

    def file(self, repo, path, ref=None):
        """The file at `ref`: what set_file() gave for that ref, else the default branch's (a pull
        request that does not touch a file has the default branch's)."""
        with self.lock:
            text = self.files.get((repo, path, ref))
            if text is None:
                text = self.files.get((repo, path, None))
        if text is None and self.files_dir:
            candidate = (self.files_dir / repo / path).resolve()
            if self.files_dir.resolve() in candidate.parents and candidate.is_file():
                text = candidate.read_text()
        return text

    # -- the App webhook's sending side: the caller plays GitHub delivering events ----------------
    def deliver(self, event, redelivery=False):
        """Sends `event` (an API Gateway event carrying a delivery) to `hook_target` and records
        the attempt as GitHub does; returns the target's response (None if it did not answer)."""
        started = time.time()
        try:
            response = self.hook_target(event)
            code = int(response.get("statusCode") or 0)
        except Exception:  # no answer (a crash or a timeout): GitHub records status_code 0
            response, code = None, 0
        headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
        try:
            payload = json.loads(event.get("body") or "{}")
        except ValueError:
            payload = {}
        with self.lock:
            delivery = {
                "id": next(self.delivery_ids), "guid": headers.get("x-github-delivery"),
                "delivered_at": iso(started), "redelivery": redelivery,
                "duration": round(time.time() - started, 2),
                "status": http.HTTPStatus(code).phrase if code else "timed out", "status_code": code,
                "event": headers.get("x-github-event"), "action": payload.get("action"),
                "installation_id": (payload.get("installation") or {}).get("id"),
                "repository_id": (payload.get("repository") or {}).get("id"),
            }
            self.hook_deliveries.append(delivery)
            self._events[delivery["id"]] = event
        return response

    def backdate(self, delivery_id, seconds):
        """Moves a recorded attempt's delivered_at `seconds` into the past (a local run cannot
        wait for the function's redelivery backoff)."""
        with self.lock:
            for d in self.hook_deliveries:
                if d["id"] == delivery_id:
                    d["delivered_at"] = iso(calendar.timegm(time.strptime(d["delivered_at"], "%Y-%m-%dT%H:%M:%SZ"))
                                            - seconds)
                    return d
        raise KeyError(delivery_id)

    def _redeliver_later(self, delivery_id):
        event = self._events[delivery_id]
        threading.Thread(target=self.deliver, args=(event, True), daemon=True).start()

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

            def _reply(self, code, payload, body_in=None, headers=None):
                raw = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)
                gh._record(self.command, self.path, body_in, code)
                return True

            def _check_headers(self):
                if not (self.headers.get("Authorization") or "").startswith(("Bearer ", "token ")):
                    return "Requires authentication"
                if self.headers.get("X-GitHub-Api-Version") not in (None, "2022-11-28"):
                    return "Unsupported API version"
                return None

            def _credential(self):
                return (self.headers.get("Authorization") or "").split(" ", 1)[-1].strip()

            def _check_app_jwt(self):
                """App mode, /app/... and the installation lookup: the App's JWT."""
                return gh.app.check_jwt(self._credential())

            def _check_token(self, repo):
                """App mode, repository endpoints: (status, message) unless the request carries
                an unexpired installation token this stand-in issued for an installation that has
                `repo`."""
                with gh.lock:
                    issued = gh.tokens.get(self._credential())
                if issued is None:
                    return 401, "Bad credentials"
                if issued["expires_at"] <= time.time():
                    return 401, "Bad credentials (the installation token expired)"
                if repo not in gh.installations.get(issued["installation"], []):
                    return 403, "Resource not accessible by integration"
                if issued["repositories"] is not None and repo.split("/", 1)[1] not in issued["repositories"]:
                    return 403, "Resource not accessible by integration (the token is for other repositories)"
                return None

            def _app_get(self, url, query):
                """App mode GETs that take the App JWT; None when the path is not one of them, else
                True once answered."""
                if not (url.path in (HOOK_DELIVERIES, "/app") or REPO_INSTALLATION.match(url.path)):
                    return None
                problem = self._check_app_jwt()
                if problem:
                    return self._reply(401, {"message": problem})
                if url.path == "/app":
                    # Statuses posted with an installation token are created by "<slug>[bot]".
                    return self._reply(200, {"id": gh.app.app_id, "slug": APP_BOT.removesuffix("[bot]")})
                if m := REPO_INSTALLATION.match(url.path):
                    found = [i for i, repos in gh.installations.items() if m[1] in repos]
                    if not found:
                        return self._reply(404, {"message": "Not Found"})
                    return self._reply(200, {"id": found[0], "app_id": gh.app.app_id,
                                             "target_type": "Organization", "repository_selection": "selected"})
                per_page = max(1, min(int(query.get("per_page") or 30), 100, gh.page_size))
                cursor = query.get("cursor")
                below = int(cursor[3:]) if cursor and cursor.startswith("v1_") and cursor[3:].isdigit() else None
                with gh.lock:
                    listed = sorted((dict(d) for d in gh.hook_deliveries if below is None or d["id"] < below),
                                    key=lambda d: -d["id"])
                page, rest = listed[:per_page], listed[per_page:]
                headers = {}
                if rest:
                    headers["Link"] = (f'<{gh.url}{HOOK_DELIVERIES}?per_page={per_page}&cursor=v1_{page[-1]["id"]}>; '
                                       f'rel="next"')
                return self._reply(200, page, headers=headers)

            def _app_post(self, body):
                """App mode POSTs that take the App JWT; None when the path is not one of them, else
                True once answered."""
                m_token, m_attempt = ACCESS_TOKENS.match(self.path), HOOK_ATTEMPTS.match(self.path)
                if not (m_token or m_attempt):
                    return None
                problem = self._check_app_jwt()
                if problem:
                    return self._reply(401, {"message": problem}, body)
                if m_token:
                    installation = int(m_token[1])
                    if installation not in gh.installations:
                        return self._reply(404, {"message": "Not Found"}, body)
                    # The installation grants what the App's manifest asks for; asking for more is
                    # refused, as GitHub refuses it.
                    granted = json.loads((ROOT / "github-app-manifest.json").read_text())["default_permissions"]
                    asked = (body or {}).get("permissions") if isinstance(body, dict) else None
                    rank = {"read": 1, "write": 2, "admin": 3}
                    if asked and any(rank.get(level, 9) > rank.get(granted.get(name), 0) for name, level in asked.items()):
                        return self._reply(422, {"message": "The permissions requested are not granted to this "
                                                 "installation."}, body)
                    token, expires_at = f"ghs_{secrets.token_hex(18)}", int(time.time()) + TOKEN_LIFETIME_S
                    # A token asked for some repositories (by name) reaches only those, as GitHub's.
                    names = (body or {}).get("repositories") if isinstance(body, dict) else None
                    with gh.lock:
                        gh.tokens[token] = {"installation": installation, "expires_at": expires_at,
                                            "repositories": names}
                        gh.token_scopes.append({"installation": installation, "repositories": names,
                                                "permissions": (body or {}).get("permissions")
                                                if isinstance(body, dict) else None})
                        gh.token_requests.append(installation)
                    return self._reply(201, {"token": token, "expires_at": iso(expires_at),
                                             "permissions": asked or granted,
                                             "repository_selection": "selected"}, body)
                delivery_id = int(m_attempt[1])
                with gh.lock:
                    known = delivery_id in gh._events
                    if known:
                        gh.redeliveries.append(delivery_id)
                if not known:
                    return self._reply(404, {"message": "Not Found"}, body)
                self._reply(202, {}, body)
                gh._redeliver_later(delivery_id)  # after the answer, as GitHub delivers: asynchronously
                return True

            def do_GET(self):
                problem = self._check_headers()
                if problem:
                    return self._reply(401, {"message": problem})
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if gh.app and self._app_get(url, query) is not None:
                    return None
                if gh.app and (m := re.match(r"^/repos/([^/]+/[^/]+)/", url.path)):
                    refused = self._check_token(m[1])
                    if refused:
                        return self._reply(refused[0], {"message": refused[1]})
                if url.path == "/user" and not gh.app:
                    return self._reply(200, {"login": BOT_LOGIN})
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
                if m := PERMISSION.match(url.path):
                    user = m[2]
                    granted = gh.permissions.get(user, gh.default_permission)
                    if granted not in ROLES:
                        return self._reply(404, {"message": f"{user} is not a user"})
                    permission, role = ROLES[granted]
                    return self._reply(200, {"permission": permission, "role_name": role,
                                             "user": {"login": user, "type": "User"}})
                if m := CONTENTS.match(url.path):
                    text = gh.file(m[1], m[2], query.get("ref"))
                    if text is None:
                        return self._reply(404, {"message": "Not Found"})
                    data = text.encode()
                    encoded = base64.b64encode(data).decode()
                    return self._reply(200, {"type": "file", "encoding": "base64", "path": m[2], "size": len(data),
                                             "sha": blob_sha(data),
                                             "content": "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60))})
                if m := PULL.match(url.path):
                    with gh.lock:
                        pull = gh.pulls.get((m[1], int(m[2])))
                    if pull:
                        return self._reply(200, {"number": pull["number"], "state": pull["state"],
                                                 "head": {"sha": pull["head_sha"], "ref": pull["head_ref"],
                                                          "repo": {"full_name": pull["head_repo"]}},
                                                 "base": {"ref": pull.get("base_ref", "master"),
                                                          "repo": {"full_name": m[1]}}})
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
                if gh.app and self._app_post(body) is not None:
                    return None
                if gh.app and (m := re.match(r"^/repos/([^/]+/[^/]+)/", self.path)):
                    refused = self._check_token(m[1])
                    if refused:
                        return self._reply(refused[0], {"message": refused[1]}, body)
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if m := DEPLOYMENTS.match(self.path):
                    if not isinstance(body.get("ref"), str):
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "ref", "code": "missing_field"}]}, body)
                    if len(body.get("description") or "") > 140:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "description", "code": "too_long"}]}, body)
                    contexts = body.get("required_contexts")
                    if contexts is not None and not (isinstance(contexts, list)
                                                     and all(isinstance(c, str) for c in contexts)):
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "required_contexts", "code": "invalid"}]}, body)
                    with gh.lock:
                        dep = {"id": next(gh.ids), "repo": m[1], "sha": body["ref"], "ref": body["ref"],
                               "task": body.get("task", "deploy"), "payload": body.get("payload", {}),
                               "environment": body.get("environment", "production"),
                               "description": body.get("description"), "creator": {"login": APP_BOT if gh.app else BOT_LOGIN},
                               "created_at": now, "production_environment": body.get("production_environment")}
                        if contexts is not None:
                            dep["required_contexts"] = list(contexts)
                        gh.deployments[dep["id"]] = dep
                    self._reply(201, dep, body)
                    if gh.on_deployment:
                        gh.on_deployment(dict(dep))
                    return None
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
                                  "creator": {"login": APP_BOT if gh.app else BOT_LOGIN}, "created_at": now, "updated_at": now}
                        gh.statuses.setdefault(deployment_id, []).append(status)
                    return self._reply(201, status, body)
                if m := REACTIONS.match(self.path):
                    if body.get("content") not in REACTION_CONTENTS:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "content", "code": "invalid"}]}, body)
                    with gh.lock:
                        reaction = {"id": next(gh.comment_ids), "repo": m[1], "comment_id": int(m[2]),
                                    "content": body["content"], "user": {"login": "deploy-bot", "type": "Bot"},
                                    "created_at": now}
                        gh.reactions.append(reaction)
                    return self._reply(201, reaction, body)
                if m := CHECK_RUNS.match(self.path):
                    if not body.get("name") or not body.get("head_sha"):
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "head_sha", "code": "missing_field"}]}, body)
                    if len(body.get("output", {}).get("annotations", [])) > 50:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "annotations", "code": "too_many"}]}, body)
                    with gh.lock:
                        run = {"id": next(gh.ids), "repo": m[1], **body}
                        gh.check_runs.append(run)
                    return self._reply(201, run, body)
                if m := ISSUE_COMMENTS.match(self.path):
                    if not isinstance(body.get("body"), str) or not body["body"]:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "body", "code": "missing_field"}]}, body)
                    if len(body["body"]) > 65536:
                        return self._reply(422, {"message": "Validation Failed",
                                                 "errors": [{"field": "body", "code": "too_long"}]}, body)
                    with gh.lock:
                        comment_id = next(gh.comment_ids)
                        comment = {"id": comment_id, "repo": m[1], "issue": int(m[2]), "body": body["body"],
                                   "html_url": f"https://github.com/{m[1]}/pull/{m[2]}#issuecomment-{comment_id}",
                                   "user": {"login": "deploy-bot", "type": "Bot"},
                                   "created_at": now, "updated_at": now}
                        gh.comments.append(comment)
                    return self._reply(201, comment, body)
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


def sample_pulls():
    """The pull requests the sample comment events in events/payloads/ are on, as open pull
    requests from a branch of the same repository (the payloads carry no head: the stand-in
    makes up a branch and a commit per pull request, the same each time)."""
    found = {}
    for path in sorted(PAYLOADS.glob("issue_comment.*.json")):
        payload = json.loads(path.read_text())
        issue, repo = payload.get("issue") or {}, (payload.get("repository") or {}).get("full_name")
        if not issue.get("pull_request") or not repo or (repo, issue["number"]) in found:
            continue
        n = issue["number"]
        found[(repo, n)] = {"repo": repo, "number": n, "state": issue.get("state", "open"),
                            "head_ref": f"pr-{n}", "head_repo": repo,
                            "head_sha": hashlib.sha1(f"{repo}#{n}".encode()).hexdigest(),
                            "base_ref": (payload.get("repository") or {}).get("default_branch", "master")}
    return list(found.values())


def deployment_event(dep):
    """The `deployment` webhook payload GitHub sends for deployment `dep` (as this stand-in keeps
    it), built on the sample payload events/payloads/deployment.created.json."""
    payload = json.loads((PAYLOADS / "deployment.created.json").read_text())
    owner = dep["repo"].split("/")[0]
    payload["repository"].update({"full_name": dep["repo"], "name": dep["repo"].split("/")[1]})
    payload["repository"]["owner"]["login"] = owner
    payload["deployment"].update({
        "id": dep["id"], "url": f"https://api.github.com/repos/{dep['repo']}/deployments/{dep['id']}",
        "sha": dep["sha"], "ref": dep["ref"], "task": dep["task"], "payload": dep["payload"],
        "environment": dep["environment"], "original_environment": dep["environment"],
        "description": dep["description"], "creator": dict(payload["deployment"]["creator"], **dep["creator"]),
        "created_at": dep["created_at"], "updated_at": dep["created_at"]})
    if dep.get("production_environment") is not None:
        payload["deployment"]["production_environment"] = dep["production_environment"]
    return payload


def send_deployment_events(gh, invoke_url, secret, out):
    """As GitHub does: a `deployment` event, signed with the webhook secret, for each deployment
    created, sent to the function (cargo lambda watch's invoke URL) once the call that created it
    has been answered."""
    import urllib.request
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import events as sample_events

    def send(dep):
        time.sleep(0.3)  # GitHub sends it after the creating request was answered
        payload = deployment_event(dep)
        body, _ = sample_events.encoded_body(payload)
        event = sample_events.api_gateway_event("deployment", payload,
                                                sample_events.delivery_id(f"deployment-{dep['id']}", body),
                                                signing_secret=secret)
        out(f"GitHub -> deployment event for deployment {dep['id']} ({dep['environment']}), as GitHub sends it")
        request = urllib.request.Request(invoke_url, data=json.dumps(event).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.loads(response.read() or b"{}")
            body = json.loads(answer.get("body") or "{}")
            out(f"GitHub -> deployment event for deployment {dep['id']}: {answer.get('statusCode')} "
                f"{body.get('status', '')}")
        except (OSError, ValueError) as err:
            out(f"GitHub -> deployment event for deployment {dep['id']}: not delivered ({err})")

    gh.on_deployment = lambda dep: threading.Thread(target=send, args=(dep,), daemon=True).start()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="GitHub deployments API stand-in")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--seed-samples", action="store_true",
                        help="also know the deployments and pull requests the sample events in "
                             "events/payloads/ refer to")
    parser.add_argument("--app-id", type=int,
                        help="GitHub App mode: the App's id; its private key is read from the environment "
                             "(GITHUB_APP_PRIVATE_KEY, never a command-line argument), and one installation "
                             "(id 1) has the sample events' repositories")
    parser.add_argument("--files-dir", metavar="DIR",
                        help="serve DIR/<owner>/<repo>/<path> as repositories' files on their default branch "
                             "(the contents API), read at each request so that an edit applies at once")
    parser.add_argument("--send-deployment-events", metavar="INVOKE_URL",
                        help="send a signed `deployment` event (secret: $GITHUB_WEBHOOK_SECRET) to this Lambda "
                             "invoke URL for each deployment created, as GitHub does")
    args = parser.parse_args()
    seed = sample_deployments() if args.seed_samples else []
    pulls = sample_pulls() if args.seed_samples else []
    app, installations = None, None
    if args.app_id:
        from cryptography.hazmat.primitives import serialization
        pem = os.environ.get("GITHUB_APP_PRIVATE_KEY", "").replace("\\n", "\n")
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            sys.exit("GitHub stand-in: GITHUB_APP_PRIVATE_KEY is not a PEM private key")
        app = StandInApp(args.app_id, key.public_key())
        repos = sorted({json.loads(p.read_text()).get("repository", {}).get("full_name")
                        for p in PAYLOADS.glob("*.json")} - {None})
        installations = {1: repos}
    def show(call):
        """One line per call; a comment's multi-line text (a .status table) below it, as written."""
        body = call["body"]
        text = body.get("body") if isinstance(body, dict) else None
        if isinstance(text, str) and "\n" in text:
            rest = {k: v for k, v in body.items() if k != "body"}
            head = f" {json.dumps(rest, ensure_ascii=False)}" if rest else ""
            lines = "".join(f"\n    {line}".rstrip() for line in text.splitlines())
            print(f"GitHub <- {call['method']} {call['path']} -> {call['status']}{head} body:{lines}", flush=True)
        else:
            shown = json.dumps(body, ensure_ascii=False) if body else ""
            print(f"GitHub <- {call['method']} {call['path']} -> {call['status']} {shown}", flush=True)

    gh = GitHubStandIn(port=args.port, seed=seed, pulls=pulls, app=app, installations=installations,
                       on_call=show, files_dir=args.files_dir).start()
    if args.send_deployment_events:
        # Signed as GitHub signs: with the webhook's secret (the first of a rotation's list).
        send_deployment_events(gh, args.send_deployment_events,
                               os.environ.get("GITHUB_WEBHOOK_SECRET", "").split(",")[0].strip(),
                               lambda line: print(line, flush=True))
    known = (f", knows sample deployment {', '.join(str(d['id']) for d in seed)} and pull request "
             f"{', '.join('#' + str(p['number']) for p in pulls)}") if seed else ""
    mode = f", GitHub App {args.app_id} (verifies its JWTs; installation 1)" if app else ""
    print(f"GitHub stand-in on {gh.url}{known}{mode}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
