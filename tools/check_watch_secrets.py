#!/usr/bin/env python3
"""`make secrets-check` (part of `make test`): no value from .env reaches the terminal through
`make watch` or `make invoke`.

It runs twice, in token mode and in GitHub App mode. It writes an env file with sentinel secrets
(webhook secret, hook secret, AWS secret key, and the GitHub token or the App's multi-line private
key) and
free loopback ports, then runs the real `make watch ENV_FILE=... WATCH_PORT=...` with RUST_LOG=trace
in its environment (a developer's shell may have it; cargo-lambda's file watcher then logs the
function's whole environment), sends events through `make invoke` (a ping, a merged PR and a
deployment signed with the sentinel secret, so the token goes to the GitHub stand-in and the
secret signs the deploy-hook call, and a forged delivery) while watch sends a scheduled sweep
every 2 s, edits the env file so the function restarts, and stops everything with SIGINT to the
process group, as Ctrl-C does. It fails if a
sentinel appears in anything printed, if tools/watch.py had to redact one (its first line of
defence failed), if the function did not really run, or if anything outlives the Ctrl-C.

Why the real cargo-lambda and not only the arguments handed to it: the leak was cargo-lambda's
own logging, which a new cargo-lambda version can change; only running it shows what it prints.
The debug binary is built first (no-op after `cargo test`, which builds it; 3-4 minutes on a
fresh clone with 2 cores); from then on everything is bounded (RUN_TIMEOUT s, default 90) and on loopback.
"""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import events  # noqa: E402

RUN_TIMEOUT = float(os.environ.get("RUN_TIMEOUT") or 90)
BUILD_TIMEOUT = float(os.environ.get("BUILD_TIMEOUT") or 900)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port):
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Captured:
    def __init__(self, proc):
        self.lines, self.lock = [], threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for raw in iter(stream.readline, b""):
            with self.lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def text(self):
        with self.lock:
            return "\n".join(self.lines)

    def wait_for(self, needle, timeout, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return True
            time.sleep(0.2)
        return False


def app_key():
    """A fresh GitHub App private key, as the .pem GitHub hands out (multi-line PKCS#1)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode().strip()


def main():
    """Token mode, then GitHub App mode (the App's multi-line private key as the sentinel)."""
    return max(check("token"), check("app"))


def check(mode):
    problems = []
    sentinels = {
        "GITHUB_WEBHOOK_SECRET": f"sentinel-webhook-secret-{secrets.token_hex(8)}",
        "HOOK_SIGNING_SECRET": f"sentinel-hook-secret-{secrets.token_hex(8)}",
        "AWS_SECRET_ACCESS_KEY": f"sentinel-aws-secret-{secrets.token_hex(8)}",
    }
    if mode == "app":
        sentinels["GITHUB_APP_PRIVATE_KEY"] = app_key()
        auth = ["GITHUB_APP_ID=424242", f'GITHUB_APP_PRIVATE_KEY="{sentinels["GITHUB_APP_PRIVATE_KEY"]}"']
    else:
        sentinels["GITHUB_TOKEN"] = f"ghp_SENTINELtoken{secrets.token_hex(8)}"
        auth = [f"GITHUB_TOKEN={sentinels['GITHUB_TOKEN']}"]
    ddb, gh, hook, watch = free_ports(4)
    tmp = Path(tempfile.mkdtemp(prefix="secrets-check-"))
    env_file = tmp / "watch.env"
    env_file.write_text("\n".join([
        "# sentinel settings written by tools/check_watch_secrets.py",
        f"GITHUB_WEBHOOK_SECRET={sentinels['GITHUB_WEBHOOK_SECRET']},sample-webhook-secret",
        *auth,
        f"HOOK_SIGNING_SECRET={sentinels['HOOK_SIGNING_SECRET']}",
        f"GITHUB_API_URL=http://127.0.0.1:{gh}",
        "DEPLOYMENTS_TABLE=deploy-webhook-secrets-check",
        'DEPLOY_RULES="@default=production"',
        f"DEPLOY_HOOK_URL=http://127.0.0.1:{hook}/sync",
        f"PUBLIC_URL=http://127.0.0.1:{watch}/lambda-url/deploy-webhook",
        f"AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:{ddb}",
        "AWS_REGION=us-east-1",
        "AWS_ACCESS_KEY_ID=local",
        f"AWS_SECRET_ACCESS_KEY={sentinels['AWS_SECRET_ACCESS_KEY']}",
        "AWS_LAMBDA_LOG_LEVEL=INFO",
    ]) + "\n")
    secret = sentinels["GITHUB_WEBHOOK_SECRET"]
    merged = events.load_payload("pull_request.merged")
    deployment = events.load_payload("deployment.created")
    event_files = {
        "ping": ROOT / "events" / "ping.json",
        "merged PR": events.api_gateway_event("pull_request", merged, str(uuid.uuid4()), secret),
        "deployment": events.api_gateway_event("deployment", deployment, str(uuid.uuid4()), secret),
        "forged": ROOT / "events" / "bad_signature.json",
    }
    for name, event in list(event_files.items()):
        if isinstance(event, dict):
            path = tmp / f"{name.replace(' ', '_')}.json"
            path.write_text(json.dumps(event))
            event_files[name] = path

    print("secrets-check: building the debug binary (no-op when cargo test built it)", flush=True)
    try:
        subprocess.run(["cargo", "build", "--locked", "--quiet", "--bin", "deploy-webhook"], cwd=ROOT,
                       check=True, timeout=BUILD_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"secrets-check: FAILED: the debug build did not succeed: {err}")
        return 1

    env = {**os.environ, "RUST_LOG": "trace", "SWEEP_EVERY": "2", **sentinels}
    # ^ also the sentinels in the shell's own environment, as a developer who exported them would have
    make = ["make", "--no-print-directory", "-C", str(ROOT)]
    started = time.monotonic()
    proc = subprocess.Popen([*make, "watch", f"ENV_FILE={env_file}", f"WATCH_PORT={watch}"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    out = Captured(proc)
    answers = {}
    try:
        if not out.wait_for("ready:", RUN_TIMEOUT / 2):
            problems.append("make watch did not become ready")
        else:
            for name, path in event_files.items():
                left = max(5, RUN_TIMEOUT - (time.monotonic() - started) - 20)
                result = subprocess.run([*make, "-s", "invoke", f"EVENT={path}", f"WATCH_PORT={watch}",
                                         f"INVOKE_TIMEOUT={int(left)}"], env=env, capture_output=True,
                                        timeout=left + 10)
                text = (result.stdout + result.stderr).decode(errors="replace")
                with out.lock:
                    out.lines.append(f"[make invoke {name}] {text}")
                answers[name] = text.split("\n", 1)[0].strip()
            # an edit of the env file restarts the function: that output is checked too
            with env_file.open("a") as f:
                f.write("# edited\n")
            if not out.wait_for("ready:", 30, count=2):
                problems.append("make watch did not restart after the env file changed")
    except subprocess.TimeoutExpired:
        problems.append("make invoke did not return in time")
    finally:
        stopped_at = time.monotonic()
        try:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        except ProcessLookupError:
            pass
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            problems.append("make watch did not stop within 20 s of SIGINT")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.thread.join(5)
        time.sleep(0.5)
        still = [p for p in (ddb, gh, hook, watch) if listening(p)]
        if still:
            problems.append(f"something still listens on {still} after Ctrl-C")
        stop_seconds = time.monotonic() - stopped_at

    text = out.text()
    # A multi-line secret (the App's key) leaks as any one of its lines, too.
    leaked = {key for key, value in sentinels.items()
              if value in text or any(len(line) > 20 and line in text for line in value.splitlines())}
    for key in sorted(leaked):
        problems.append(f"the value of {key} reached the terminal")
    if "replaced by ***" in text:
        problems.append("tools/watch.py had to redact a secret: cargo-lambda or a stand-in printed one")
    if answers.get("merged PR") != "200" or "GitHub <- POST" not in text:
        problems.append(f"the function did not really run (merged PR answered {answers.get('merged PR')!r})")
    if "hook <- POST /sync" not in text:
        problems.append("the deploy-hook stand-in was not called")
    # (Answered `processed`, or `superseded` when the sample deployment sent meanwhile started first.)
    if "GitHub -> deployment event for deployment 1000: 200 " not in text:
        problems.append("the GitHub stand-in did not send the deployment event of the deployment it created, "
                        "or the function did not answer it 200")
    if mode == "app" and "POST /app/installations/1/access_tokens -> 201" not in text:
        problems.append("App mode: the function did not obtain an installation token from the stand-in")

    if problems:
        shown = text
        for key, value in sentinels.items():
            shown = shown.replace(value, f"<{key}>")
        print(shown)
        print(f"secrets-check ({mode} mode): FAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"secrets-check ({mode} mode): ok: {len(text.splitlines())} lines from make watch and make invoke (answers "
          f"{', '.join(f'{k} {v}' for k, v in answers.items())}; restart on env change; stopped by SIGINT "
          f"in {stop_seconds:.1f} s), no sentinel secret in them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
