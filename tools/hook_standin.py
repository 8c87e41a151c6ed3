#!/usr/bin/env python3
"""A deploy-hook stand-in on 127.0.0.1, for `make watch` and scripts: it answers the function's
signed deploy calls the ways a real deploy system can, and reports back on the callback URL.

The function POSTs JSON {"deployment_id", "repository", "environment", "ref", "sha", "task",
"creator", "payload", "delivery_id", "callback_url", "deadline"} with
X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body with the hook secret, HOOK_SIGNING_SECRET;
never the webhook secret>. A call whose signature matches none of the secrets (a comma-separated
list, as HOOK_SIGNING_SECRET) gets 401.

    POST /sync          200 {"description": "Deployed <sha7> to <env>", "log_url": ".../logs/<id>"}
    POST /fail          500 {"description": "deploy failed"}
    POST /async         202 at once; after delay/2 s it POSTs {"state": "in_progress", "log_url"} to
                        callback_url, after delay s {"state": "success", "description", "log_url",
                        "environment_url"}; each callback signed like the call (first secret).
                        ?delay=<seconds>, default 3.
    POST /async-fail    the same, ending with {"state": "failure"}
    POST /never         202 and never calls back (for deploy timeouts)
    GET  /calls         JSON list of the calls received: {"deployment_id", "path", "time", "status"}
    GET  /logs/<id>     a plain-text "deploy log" (what log_url points at)

One line per call and per callback goes to stdout; the secret is never printed.

    hook = HookStandIn(secret="s", on_line=print).start(); hook.url; hook.calls; hook.stop()
    hook_standin.py [--port 8791] [--secret S]   (else $HOOK_SIGNING_SECRET; --port 0 prints
                                                 "PORT <n>" as its first line)
Only the Python standard library is used.
"""
import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback_server import QuietThreadingHTTPServer  # noqa: E402

ASYNC_ROUTES = {"/async": "success", "/async-fail": "failure"}
CALLBACK_ATTEMPTS = 3


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secrets_of(value):
    return [s.strip() for s in (value or "").split(",") if s.strip()]


class HookStandIn:
    def __init__(self, secret, port=0, on_line=None):
        self.secrets = secrets_of(secret)
        if not self.secrets:
            raise ValueError("the hook stand-in needs the hook secret (--secret or $HOOK_SIGNING_SECRET)")
        self.port = port
        self.on_line = on_line or (lambda line: None)
        self.lock = threading.Lock()
        self.calls = []       # {"deployment_id", "path", "time", "status"}
        self.callbacks = []   # {"deployment_id", "state", "status"}
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.server = QuietThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _log(self, line):
        self.on_line(line)  # "<- POST /sync deployment 7 ..."; the CLI prints it as "hook <- ..."

    def _verified(self, raw, header):
        return any(hmac.compare_digest(sign(s, raw), header or "") for s in self.secrets)

    # -- callbacks ------------------------------------------------------------------------------
    def _post_callback(self, call, body):
        raw = json.dumps(body).encode()
        request = urllib.request.Request(call["callback_url"], data=raw, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "deploy-hook-standin",
            "X-Hub-Signature-256": sign(self.secrets[0], raw)})
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            except (OSError, ValueError) as err:
                status = f"unreachable ({err.__class__.__name__})"
            self._log(f"-> callback {body['state']} for deployment {call['deployment_id']}: {status}"
                      + (f" (attempt {attempt})" if attempt > 1 else ""))
            with self.lock:
                self.callbacks.append({"deployment_id": call["deployment_id"], "state": body["state"],
                                       "status": status})
            if isinstance(status, int) and status < 500:
                return
            time.sleep(attempt)

    def _run_async(self, call, delay, final):
        log_url = f"{self.url}/logs/{call['deployment_id']}"
        time.sleep(delay / 2)
        self._post_callback(call, {"state": "in_progress", "log_url": log_url})
        time.sleep(delay / 2)
        env, sha7 = call.get("environment") or "?", (call.get("sha") or "")[:7]
        if final == "success":
            body = {"state": "success", "description": f"Deployed {sha7} to {env}", "log_url": log_url,
                    "environment_url": f"https://{env}.example.com"}
        else:
            body = {"state": "failure", "description": f"deploy of {sha7} to {env} failed", "log_url": log_url}
        self._post_callback(call, body)

    # -- HTTP -----------------------------------------------------------------------------------
    def _handler(self):
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _reply(self, code, payload, content_type="application/json"):
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/calls":
                    with hook.lock:
                        return self._reply(200, list(hook.calls))
                if url.path.startswith("/logs/"):
                    deployment = url.path[len("/logs/"):]
                    with hook.lock:
                        lines = [f"{c['time']} {c['path']} -> {c['status']}" for c in hook.calls
                                 if str(c["deployment_id"]) == deployment]
                    return self._reply(200, f"deploy log of deployment {deployment} (hook stand-in)\n"
                                       + "".join(line + "\n" for line in lines), "text/plain; charset=utf-8")
                self._reply(404, {"message": "Not Found"})

            def do_POST(self):
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not hook._verified(raw, self.headers.get("X-Hub-Signature-256")):
                    hook._log(f"<- POST {url.path}: signature missing or wrong -> 401")
                    return self._reply(401, {"description": "signature does not match"})
                try:
                    call = json.loads(raw)
                    if not isinstance(call, dict):
                        raise ValueError("not an object")
                except ValueError:
                    hook._log(f"<- POST {url.path}: body is not a JSON object -> 400")
                    return self._reply(400, {"description": "body is not a JSON object"})
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                deployment = call.get("deployment_id")
                env, sha7 = call.get("environment") or "?", (call.get("sha") or "")[:7]
                if url.path == "/sync":
                    code, answer = 200, {"description": f"Deployed {sha7} to {env}",
                                         "log_url": f"{hook.url}/logs/{deployment}"}
                elif url.path == "/fail":
                    code, answer = 500, {"description": "deploy failed"}
                elif url.path in ASYNC_ROUTES or url.path == "/never":
                    code, answer = 202, {"description": f"deploying {sha7} to {env}"}
                    if url.path != "/never":
                        if not call.get("callback_url"):
                            code, answer = 400, {"description": "callback_url is missing"}
                        else:
                            try:
                                delay = max(0.0, float(query.get("delay", "3")))
                            except ValueError:
                                delay = 3.0
                            threading.Thread(target=hook._run_async, daemon=True,
                                             args=(call, delay, ASYNC_ROUTES[url.path])).start()
                else:
                    code, answer = 404, {"description": "no such route (use /sync, /fail, /async, /async-fail, /never)"}
                with hook.lock:
                    hook.calls.append({"deployment_id": deployment, "path": url.path,
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "status": code})
                hook._log(f"<- POST {url.path} deployment {deployment} {call.get('repository')} "
                          f"{env} {sha7} -> {code}")
                self._reply(code, answer)

        return Handler


def main():
    parser = argparse.ArgumentParser(description="deploy-hook stand-in (sync, failing, async and silent hooks)")
    parser.add_argument("--port", type=int, default=8791, help="0 picks a free port and prints PORT <n> first")
    parser.add_argument("--secret", help="hook secret(s), comma-separated; default $HOOK_SIGNING_SECRET")
    args = parser.parse_args()
    try:
        hook = HookStandIn(args.secret or os.environ.get("HOOK_SIGNING_SECRET"), port=args.port,
                           on_line=lambda line: print(f"hook {line}", flush=True)).start()
    except (ValueError, OSError) as err:
        sys.exit(f"hook stand-in: {err}")
    if args.port == 0:
        print(f"PORT {hook.server.server_address[1]}", flush=True)
    print(f"deploy-hook stand-in on {hook.url} (/sync, /fail, /async, /async-fail, /never)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
