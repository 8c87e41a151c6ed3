#!/usr/bin/env python3
"""`make run`: the whole flow on this machine, with no AWS account and no network.

Starts a local DynamoDB (moto, table created), a GitHub stand-in on loopback, and the real
function (the debug binary, as make run builds it, under a local Lambda Runtime API), then sends sample events through
it in the order GitHub would: ping → a merged PR → the deployment it created → that deployment's
status, plus a redelivery and two deliveries that are refused or ignored. It prints each response,
each GitHub API call, and the final DynamoDB state; it exits non-zero if anything differs from
what the README promises. Everything it starts is stopped at the end.

`demo.py --app` (`make run APP=1`): the same flow with the function authenticating as a GitHub
App (GITHUB_APP_ID + GITHUB_APP_PRIVATE_KEY, an RSA key generated for this run and never
written to disk), against a stand-in that verifies the App JWT and hands out installation tokens;
then one token per installation and repository, scoped to that repository and to the function's
permissions (a second installation looked up by repository), and a merged-PR
delivery answered 503 during a DynamoDB outage, redelivered by the scheduled sweep, deployed once.

Both modes end with the comment commands on `production`: `.lock` by alice, a refused `.unlock`
by someone with read permission, a merge that waits `queued` behind the lock, `.unlock` (it
starts), `.rollback` (a new deployment of the commit that succeeded before), its redelivery
answered `duplicate`, and `.status`; it prints the status timeline and the bot's replies.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import itertools  # noqa: E402

import events  # noqa: E402
from github_standin import GitHubStandIn  # noqa: E402
from hook_standin import HookStandIn  # noqa: E402
from lambda_local import FunctionError, LocalLambda, status_of  # noqa: E402
from loopback_server import QuietThreadingHTTPServer  # noqa: E402

TABLE = "deploy-webhook-local"
SECRET = events.SAMPLE_SECRET
# The deploy hooks' own secret (HOOK_SIGNING_SECRET): the hook stand-in verifies calls and signs
# its callbacks with it; the webhook secret is never given to it.
HOOK_SECRET = "sample-hook-secret"
BINARY = ROOT / "target" / "debug" / "deploy-webhook"
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")

failures = []

APP_MODE = "--app" in sys.argv[1:]
# --iam: the local DynamoDB enforces IAM and the function runs with a role that has exactly the
# policy template.yaml grants (tools/iam_check.py); any AccessDenied fails the run.
IAM_MODE = "--iam" in sys.argv[1:]
# The demo's own reads of the table (the final state): an admin's keys once IAM is enforced.
READER = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
# --binary PATH: another build of the function (e.g. target/release/deploy-webhook).
BINARY = Path(sys.argv[sys.argv.index("--binary") + 1]).resolve() if "--binary" in sys.argv[1:-1] else BINARY
APP_ID = 424242
# The App's installations as the stand-in knows them: the sample repository's installation (its
# id is in the sample payloads) and a second one whose deliveries carry no installation id.
INSTALLATIONS = {1: ["Codertocat/Hello-World"], 2: ["octo-org/api"]}
OTHER_REPO = ("octo-org/api", 555000111)


def short(value, width=110):
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def answer(body):
    """A response body as a reader wants it: the status word first, then the details."""
    if not isinstance(body, dict):
        return short(body, 200)
    rest = {k: v for k, v in body.items() if k not in ("status", "delivery")}
    return f"{body.get('status')}  {json.dumps(rest, separators=(',', ':'), ensure_ascii=False)}"


def sweep_answer(result):
    """The scheduled sweep's answer in the style of a delivery's: `swept`, then what it did."""
    if not isinstance(result, dict):
        return short(result, 200)
    rest = {k: v for k, v in result.items() if k != "status"}
    return f"{result.get('status', '?')}  {json.dumps(rest, separators=(',', ':'), ensure_ascii=False)}"


def show_call(call):
    body = call["body"]
    if body and "ref" in body:
        body = {k: body[k] for k in ("ref", "environment", "production_environment", "description",
                                     "required_contexts") if k in body}
    elif body and isinstance(body.get("body"), str):  # a reply: its first line, as written
        body = json.dumps({"body": body["body"].splitlines()[0]}, ensure_ascii=False)
    print(f"      {DIM}GitHub ←{RESET} {call['method']} {call['path']} {short(body) if body else ''} "
          f"{DIM}→ {call['status']}{RESET}")


def send(fn, title, event, expect_status, expect_word=None):
    print(f"\n{BOLD}▶ {title}{RESET}")
    code, body = status_of(fn.invoke(event))
    word = body.get("status") if isinstance(body, dict) else None
    ok = code == expect_status and (expect_word is None or word == expect_word)
    colour = GREEN if ok else RED
    print(f"  {colour}← {code}{RESET} {answer(body)}")
    if not ok:
        failures.append(f"{title}: expected {expect_status} {expect_word or ''}, got {code} {word}")
    return body


def start_dynamodb(log):
    proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/local_dynamodb.py"),
                             "--table", TABLE, "--exit-with-parent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        raise SystemExit(f"the local DynamoDB did not start: {line!r} (see {log.name})")
    return proc, f"http://127.0.0.1:{line.split()[1]}"


def print_table(endpoint):
    import boto3
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1", **READER)
    items = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    print(f"\n{BOLD}DynamoDB table {TABLE}: {len(items)} items{RESET}")
    plain = [{k: list(v.values())[0] for k, v in item.items()} for item in items]
    for item in sorted(plain, key=lambda i: (i["pk"], i["sk"])):
        keys = ("state", "event_name", "attempts", "deployment_id", "environment", "sha", "run_state",
                "status_state", "status_id", "status_environment_url", "outcome")
        fields = ", ".join(f"{k}={short(item[k], 60)}" for k in keys if k in item)
        print(f"  {item['pk']}  {item['sk']}")
        print(textwrap.indent(textwrap.fill(fields, 100), "      "))
    return plain


class LocalApi:
    """The API Gateway in front of the function, on loopback, for the deploy system's callbacks:
    POST /callbacks/<token> becomes an HTTP API event for the function, as in AWS."""

    def __init__(self, fn):
        self.fn = fn
        self.server = None

    def start(self):
        api = self
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event = {
                    "version": "2.0", "routeKey": "POST /callbacks/{token}", "rawPath": self.path,
                    "rawQueryString": "", "headers": {k.lower(): v for k, v in self.headers.items()},
                    "requestContext": {
                        "accountId": "123456789012", "apiId": "local", "domainName": self.headers.get("Host"),
                        "domainPrefix": "local", "http": {"method": "POST", "path": self.path,
                                                          "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                                          "userAgent": "hook"},
                        "requestId": str(uuid.uuid4()), "routeKey": "POST /callbacks/{token}", "stage": "$default",
                        "time": "22/Nov/2026:19:00:00 +0000", "timeEpoch": 1795460400000},
                    "body": body.decode(), "isBase64Encoded": False,
                }
                response = api.fn.invoke(event)
                out = (response.get("body") or "").encode()
                self.send_response(response.get("statusCode", 502))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = QuietThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        if self.server:
            self.server.shutdown()


def deployment_event(github, deployment_id):
    """The `deployment` event GitHub sends for a deployment the stand-in holds."""
    dep = github.deployments[deployment_id]
    payload = events.load_payload("deployment.created")
    payload["deployment"].update(id=deployment_id, sha=dep["sha"], ref=dep["ref"], environment=dep["environment"],
                                 payload=dep["payload"], description=dep["description"])
    return events.api_gateway_event("deployment", payload, str(uuid.uuid4()), SECRET)


def merge(number, base, merged_at, sha):
    payload = events.load_payload("pull_request.merged")
    payload["number"] = number
    pr = payload["pull_request"]
    pr.update(number=number, merged_at=merged_at, merge_commit_sha=sha, title=f"Change {number}")
    pr["base"]["ref"] = base
    return events.api_gateway_event("pull_request", payload, str(uuid.uuid4()), SECRET)


def wait_until(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    failures.append(f"timed out waiting for {what}")
    return False


def timeline(github, ids):
    print(f"\n{BOLD}GitHub status timeline{RESET}")
    for deployment_id in ids:
        states = [s["state"] for s in github.statuses.get(deployment_id, [])]
        env = github.deployments[deployment_id]["environment"]
        print(f"  deployment {deployment_id} ({env}): " + " → ".join(states))
    return {i: [s["state"] for s in github.statuses.get(i, [])] for i in ids}


def async_flow(fn, github):
    """Three merges into staging in quick succession with an asynchronous hook."""
    print(f"\n{BOLD}Asynchronous deploys: three merges into release/1 → staging, one run at a time{RESET}")
    ids = []
    for n in (11, 12, 13):
        sha = f"{n:02d}" * 20
        body = send(fn, f"pull request #{n} merged into release/1", merge(n, "release/1", f"2026-11-22T19:{n}:00Z", sha),
                    200, "processed")
        ids.append(body["detail"]["deployments"][0]["deployment_id"])
    expected = ["processed", "queued", "queued"]
    for deployment_id, word in zip(ids, expected):
        send(fn, f"deployment {deployment_id} created (GitHub's event for it)", deployment_event(github, deployment_id),
             200, word)
    print(f"  {DIM}… the hook answered 202 for {ids[0]} and calls back in a few seconds; "
          f"{ids[1]} and {ids[2]} wait{RESET}")
    wait_until(f"deployment {ids[2]} to finish", lambda: any(
        s["state"] == "success" for s in github.statuses.get(ids[2], [])))
    got = timeline(github, ids)
    want = {ids[0]: ["in_progress", "in_progress", "success"], ids[1]: ["queued", "inactive"],
            ids[2]: ["queued", "in_progress", "in_progress", "success"]}
    if got != want:
        failures.append(f"the asynchronous timeline is {got}, expected {want}")


def timeout_flow(fn, github):
    """A deploy system that never calls back: the sweep ends the run at its deadline."""
    print(f"\n{BOLD}A deploy that never reports back: the sweep times it out (DEPLOY_TIMEOUT_MINUTES_QA=0.05){RESET}")
    body = send(fn, "pull request #21 merged into qa-branch", merge(21, "qa-branch", "2026-11-22T20:00:00Z", "21" * 20),
                200, "processed")
    deployment_id = body["detail"]["deployments"][0]["deployment_id"]
    send(fn, f"deployment {deployment_id} created", deployment_event(github, deployment_id), 200, "processed")
    time.sleep(3.5)
    scheduled = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
                 "account": "123456789012", "time": "2026-11-22T20:01:00Z", "region": "us-east-1",
                 "resources": ["arn:aws:events:us-east-1:123456789012:rule/deploy-webhook-sweep"], "detail": {}}
    print(f"\n{BOLD}▶ the scheduled sweep (an EventBridge event){RESET}")
    result = fn.invoke(scheduled)
    print(f"  ← {sweep_answer(result)}")
    if result.get("healed") != 1:
        failures.append(f"the sweep should have timed out one run: {result}")
    got = timeline(github, [deployment_id])
    if got[deployment_id] != ["in_progress", "error"]:
        failures.append(f"the timed-out run's statuses are {got[deployment_id]}")


# ---------------------------------------------------------------- comment commands

COMMENT_IDS = itertools.count(1515200001)  # each comment its own id, as GitHub gives them


def comment_event(body, author, issue=3):
    """An `issue_comment` `created` delivery: `body` by `author` (a User) on pull request #`issue`."""
    payload = events.load_payload("issue_comment.help")
    comment_id = next(COMMENT_IDS)
    payload["issue"]["number"] = issue
    payload["comment"].update(id=comment_id, body=body)
    payload["comment"]["user"] = {**payload["comment"]["user"], "login": author, "type": "User"}
    payload["sender"] = payload["comment"]["user"]
    return comment_id, events.api_gateway_event("issue_comment", payload, str(uuid.uuid4()), SECRET)


def deployment_event_now(github, deployment_id):
    """GitHub's `deployment` event with the deployment's own created_at (a command's deployment
    has no merge time: it takes its place in the queue by when it was created)."""
    event_payload = events.load_payload("deployment.created")
    dep = github.deployments[deployment_id]
    event_payload["deployment"].update(id=deployment_id, sha=dep["sha"], ref=dep["ref"],
                                       environment=dep["environment"], payload=dep["payload"],
                                       description=dep["description"], created_at=dep["created_at"],
                                       updated_at=dep["created_at"])
    return events.api_gateway_event("deployment", event_payload, str(uuid.uuid4()), SECRET)


def command(fn, github, text, author, expect_word, reactions, reply_start):
    """Sends `text` as a new comment by `author`; checks the answer, the reactions to that
    comment and the start of the bot's one reply (`reply_start` None: no reply at all). Returns
    (answer, reply)."""
    comment_id, event = comment_event(text, author)
    replies_before = len(github.comments)
    body = send(fn, f"comment by @{author}: {text}", event, 200, expect_word)
    got = [r["content"] for r in github.reactions if r["comment_id"] == comment_id]
    replies = [c["body"] for c in github.comments[replies_before:]]
    for reply in replies:
        lines = reply.splitlines() or [""]
        print(f"      {DIM}bot's reply:{RESET} {short(lines[0], 150)}")
        for line in lines[1:]:
            print(f"                   {line}")
    if got != reactions:
        failures.append(f"{text!r}: reactions {got}, expected {reactions}")
    if reply_start is None:
        if replies:
            failures.append(f"{text!r}: replies {replies}, expected none")
    elif len(replies) != 1 or not replies[0].startswith(reply_start):
        failures.append(f"{text!r}: replies {replies}, expected one starting with {reply_start!r}")
    return body, (replies[0] if replies else ""), event


def successes(github, environment):
    """Deployments of `environment` whose last status is success, oldest first."""
    return [d for i, d in sorted(github.deployments.items())
            if d["environment"] == environment and (github.statuses.get(i) or [{}])[-1].get("state") == "success"]


def commands_flow(fn, github):
    """Comment commands on production: lock, a merge held by it, unlock, rollback, status."""
    print(f"\n{BOLD}Comment commands on production: .lock, a merge held by it, .unlock, .rollback, .status{RESET}")
    github.permissions.update(alice="write", mallory="read")
    print(f"  {DIM}GitHub (the stand-in): @alice has write permission on the repository, @mallory read{RESET}")
    before = successes(github, "production")
    if not before:
        failures.append("production has no successful deployment before the commands")
        return
    target_sha = before[-1]["sha"]
    replies_from = len(github.comments)

    command(fn, github, ".lock production db migration", "alice", "processed", ["eyes"], "🔒")
    # Someone without permission: one 😕 and nothing else (no reply, nothing stored).
    command(fn, github, ".unlock production", "mallory", "refused", ["confused"], None)

    sha = "51" * 20
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = send(fn, "pull request #51 merged into master (production is locked)", merge(51, "master", now, sha),
                200, "processed")
    held = body["detail"]["deployments"][0]["deployment_id"]
    send(fn, f"deployment {held} created (GitHub's event for it)", deployment_event(github, held), 200, "queued")
    queued = github.statuses.get(held, [])
    if [(s["state"], s["description"]) for s in queued] != [("queued", "locked by @alice: db migration")]:
        failures.append(f"the held deployment's statuses are {queued}, expected queued 'locked by @alice: db migration'")

    command(fn, github, ".unlock production", "alice", "processed", ["eyes"], "🔓")
    wait_until(f"deployment {held} to succeed", lambda: any(
        s["state"] == "success" for s in github.statuses.get(held, [])))

    answer_body, _, rollback_event = command(fn, github, ".rollback production", "alice", "processed",
                                             ["eyes", "rocket"], "🚀")
    rollback = (answer_body.get("detail") or {}).get("deployment_id") if isinstance(answer_body, dict) else None
    if rollback not in github.deployments:
        failures.append(f"the rollback answered {answer_body}, no deployment id the stand-in knows")
        return
    dep = github.deployments[rollback]
    print(f"  {DIM}the rollback deploys {dep['sha'][:7]}, the commit of the success before #{held} "
          f"({sha[:7]}); required_contexts {dep.get('required_contexts')}{RESET}")
    if (dep["sha"], dep["environment"], dep.get("required_contexts")) != (target_sha, "production", []):
        failures.append(f"the rollback deploys {dep['sha']} to {dep['environment']} with required_contexts "
                        f"{dep.get('required_contexts')}, expected {target_sha} to production with []")
    send(fn, f"deployment {rollback} created (GitHub's event for the rollback)", deployment_event_now(github, rollback),
         200, "processed")

    calls_before, replies_before = len(github.calls), len(github.comments)
    send(fn, "the .rollback comment redelivered (same X-GitHub-Delivery)", rollback_event, 200, "duplicate")
    if len(github.calls) != calls_before or len(github.comments) != replies_before:
        failures.append("the redelivered comment called GitHub again")

    _, table, _ = command(fn, github, ".status", "alice", "processed", ["eyes"], "| Environment |")
    row = next((line for line in table.splitlines() if line.startswith("| `production` |")), "")
    if f"`{target_sha[:7]}`" not in row or "🔒" in row:
        failures.append(f"the .status row for production is {row!r}, expected {target_sha[:7]} deployed and no lock")

    got = timeline(github, [held, rollback])
    want = {held: ["queued", "in_progress", "success"], rollback: ["in_progress", "success"]}
    if got != want:
        failures.append(f"the commands' timeline is {got}, expected {want}")
    print(f"\n{BOLD}The bot's replies{RESET}")
    for c in github.comments[replies_from:]:
        first, *more = c["body"].splitlines()
        print(f"  #{c['issue']}: {short(first, 160)}")
        for line in more:  # a .status table, as the pull request shows it
            print(f"       {short(line, 160)}" if line.strip() else "")


# ---------------------------------------------------------------- GitHub App mode (--app)

def app_key_pair():
    """A fresh RSA key in the PEM form GitHub hands out (PKCS#1, multi-line), and its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def is_delivery(event):
    return any(k.lower() == "x-github-delivery" for k in (event.get("headers") or {}))


class AppWebhook:
    """GitHub's sending side in App mode: each webhook delivery goes through the stand-in, which
    records the attempt (guid, answer, time) in the App webhook's deliveries list, as GitHub does;
    anything else (the scheduled sweep) goes straight to the function."""

    def __init__(self, fn, github):
        self.fn, self.github = fn, github

    def invoke(self, event):
        if not is_delivery(event):
            return self.fn.invoke(event)
        response = self.github.deliver(event)
        if response is None:
            raise FunctionError("the function did not answer the delivery")
        return response


def sweep(fn, title):
    scheduled = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
                 "account": "123456789012", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "region": "us-east-1",
                 "resources": ["arn:aws:events:us-east-1:123456789012:rule/deploy-webhook-sweep"], "detail": {}}
    print(f"\n{BOLD}▶ {title}{RESET}")
    result = fn.invoke(scheduled)
    print(f"  ← {sweep_answer(result)}")
    return result


def in_other_repo(payload):
    """`payload` moved to the second installation's repository, with no installation id in it
    (the function then looks the installation up: GET /repos/{owner}/{repo}/installation)."""
    full_name, repo_id = OTHER_REPO
    payload["repository"].update(id=repo_id, full_name=full_name, name=full_name.split("/")[1])
    payload["repository"]["owner"]["login"] = full_name.split("/")[0]
    payload.pop("installation", None)
    return payload


CONFIG = ".github/deploy-webhook.yml"
ORG_DEFAULTS = """# octo-org/.github: every repository of the organisation also publishes its docs on merge
environments:
  docs:
    branches: ["@default"]
    action: none
"""
WEB_CONFIG = """# octo-org/web: no production on merge; a preview through the sync hook instead
environments:
  production:
    branches: []
  preview:
    branches: [master]
    environment_url: https://preview.web.example.com
    action:
      hook:
        url: {hook}/sync
"""
WEB_PROPOSED = WEB_CONFIG.replace("preview.web.example.com", "preview2.web.example.com") + """  canary:
    branches: ["release/*"]
    branch_deploys: true
    timeout_minutes: 20
"""
WEB_BROKEN = WEB_CONFIG.replace("branches: [master]", "branches: [master]\n    timout_minutes: 5")


def for_repo(payload, full_name, number=None):
    """`payload` moved to another repository of the organisation (no installation id in it)."""
    payload["repository"].update(full_name=full_name, name=full_name.split("/")[1], default_branch="master")
    payload["repository"]["owner"]["login"] = full_name.split("/")[0]
    payload.pop("installation", None)
    if number is not None:
        payload["number"] = number
        payload["pull_request"]["number"] = number
    return payload


def config_flow(fn, github, hook):
    """Configuration as code: two repositories with different files (one taking the organisation's
    defaults alone), a dry run on a pull request that changes a file, a proposal that breaks it,
    and a push that breaks it while merges keep the last valid configuration."""
    print(f"\n{BOLD}Configuration as code{RESET}: {CONFIG} per repository, octo-org/.github as the "
          "organisation's defaults, over the stack's settings")
    # In App mode the organisation's installation covers these repositories too.
    github.installations.setdefault(2, []).extend(["octo-org/web", "octo-org/.github"])
    github.set_file("octo-org/web", CONFIG, WEB_CONFIG.format(hook=hook.url))

    def pushed(repo, sha):
        payload = for_repo({"ref": "refs/heads/master", "after": sha, "deleted": False,
                            "commits": [{"id": sha, "added": [], "modified": [CONFIG], "removed": []}],
                            "repository": {"owner": {}}}, repo)
        return events.api_gateway_event("push", payload, str(uuid.uuid4()), SECRET)

    # A push to the organisation's .github repository: read again at once (a warm instance that
    # read "no file" there before would otherwise wait CONFIG_RECHECK_SECONDS).
    github.set_file("octo-org/.github", CONFIG, ORG_DEFAULTS)
    send(fn, "octo-org/.github gets the organisation's defaults (a push to its master)", pushed("octo-org/.github", "ef" * 20),
         200, "config_valid")

    def merged_into(repo, number):
        payload = for_repo(events.load_payload("pull_request.merged"), repo, number)
        payload["pull_request"].update(merge_commit_sha=f"{number:040x}", title=f"Change {number}",
                                       merged_at=f"2026-11-22T21:{number % 60:02}:00Z")
        return events.api_gateway_event("pull_request", payload, str(uuid.uuid4()), SECRET)

    def environments_of(body):
        return [d["environment"] for d in body.get("detail", {}).get("deployments", [])]

    body = send(fn, "octo-org/api (no file: the organisation's defaults) merges #141 into master",
                merged_into("octo-org/api", 141), 200, "processed")
    if environments_of(body) != ["production", "docs"]:
        failures.append(f"octo-org/api deployed to {environments_of(body)}, not production and docs")
    body = send(fn, "octo-org/web (its own file) merges #151 into master", merged_into("octo-org/web", 151), 200,
                "processed")
    if environments_of(body) != ["docs", "preview"]:
        failures.append(f"octo-org/web deployed to {environments_of(body)}, not docs and preview")

    def pull_request_updated(head_sha, number=52):
        payload = for_repo(events.load_payload("pull_request.merged"), "octo-org/web", number)
        payload["action"] = "synchronize"
        payload["pull_request"].update(merged=False, merge_commit_sha=None, merged_at=None, state="open")
        payload["pull_request"]["head"].update(sha=head_sha, repo={"full_name": "octo-org/web"})
        return events.api_gateway_event("pull_request", payload, str(uuid.uuid4()), SECRET)

    def last_check_run():
        run = github.check_runs[-1]
        output = run.get("output", {})
        print(f"  {DIM}check run {run['name']} on {run['head_sha'][:7]}: {run['conclusion']}: {output.get('title')}{RESET}")
        for line in output.get("summary", "").splitlines():
            if line.startswith("|") or line.startswith("- "):
                print(f"    {line}")
        for a in output.get("annotations", []):
            print(f"    {a['path']}:{a['start_line']}: {a['message']}")
        return run

    proposal = "ab" * 20
    github.set_file("octo-org/web", CONFIG, WEB_PROPOSED.format(hook=hook.url), ref=proposal)
    send(fn, "pull request #52 on octo-org/web changes the file: a dry run", pull_request_updated(proposal), 200,
         "config_valid")
    run = last_check_run()
    if run["conclusion"] != "success" or "| canary | (environment) | — | added: " not in run["output"]["summary"]:
        failures.append("the dry run's check run does not show canary added")

    broken = "cd" * 20
    github.set_file("octo-org/web", CONFIG, WEB_BROKEN.format(hook=hook.url), ref=broken)
    send(fn, "pull request #52 pushed again, with a typo in the file", pull_request_updated(broken), 200,
         "config_invalid")
    run = last_check_run()
    if run["conclusion"] != "failure" or not run["output"].get("annotations"):
        failures.append("the broken proposal did not get a failing check run with its line")

    # The typo merged anyway: the push breaks the default branch's file.
    github.set_file("octo-org/web", CONFIG, WEB_BROKEN.format(hook=hook.url))
    send(fn, "the typo is merged: a push to master that breaks octo-org/web's file", pushed("octo-org/web", broken),
         200, "config_invalid")
    last_check_run()
    body = send(fn, "octo-org/web merges #153: the last valid configuration stays in force",
                merged_into("octo-org/web", 153), 200, "processed")
    if environments_of(body) != ["docs", "preview"]:
        failures.append(f"after the broken push octo-org/web deployed to {environments_of(body)}, not docs and preview")


def inject_dynamodb_faults(endpoint, count):
    import urllib.request
    request = urllib.request.Request(f"{endpoint}/_local/faults", method="POST",
                                     data=json.dumps({"count": count, "kind": "unavailable", "table": TABLE}).encode())
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()


def last_log_line(log_path, message):
    found = None
    for line in Path(log_path).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if message in json.dumps(entry.get("message", entry)):
            found = entry
    return found


def run_deployment(fn, github, deployment_id, payload_edit=None):
    """GitHub's `deployment` event for a deployment the stand-in holds, sent through `fn`."""
    dep = github.deployments[deployment_id]
    payload = events.load_payload("deployment.created")
    payload["deployment"].update(id=deployment_id, sha=dep["sha"], ref=dep["ref"], environment=dep["environment"],
                                 payload=dep["payload"], description=dep["description"])
    if payload_edit:
        payload = payload_edit(payload)
    return send(fn, f"deployment {deployment_id} created ({dep['repo']})",
                events.api_gateway_event("deployment", payload, str(uuid.uuid4()), SECRET), 200, "processed")


def app_flow(fn, github, endpoint, fn_log):
    """App mode: tokens per installation, and a failed delivery recovered by the sweep."""
    print(f"\n{BOLD}GitHub App: a second installation, found by repository (its deliveries carry no "
          f"installation id){RESET}")
    other_ids = []
    for n in (41, 42):
        payload = in_other_repo(events.load_payload("pull_request.merged"))
        payload["number"] = n
        payload["pull_request"].update(number=n, merged_at=f"2026-11-22T20:{n}:00Z", merge_commit_sha=f"{n:02d}" * 20,
                                       title=f"Change {n}")
        body = send(fn, f"pull request #{n} merged into master of {OTHER_REPO[0]}",
                    events.api_gateway_event("pull_request", payload, str(uuid.uuid4()), SECRET), 200, "processed")
        other_ids.append(body["detail"]["deployments"][0]["deployment_id"])
    for deployment_id in other_ids:
        run_deployment(fn, github, deployment_id, in_other_repo)
    lookups = [c for c in github.calls if c["path"] == f"/repos/{OTHER_REPO[0]}/installation"]
    if len(lookups) != 1:
        failures.append(f"the installation of {OTHER_REPO[0]} was looked up {len(lookups)} times, expected once")

    print(f"\n{BOLD}GitHub App: a merged PR delivered during a DynamoDB outage, then redelivered by the "
          f"scheduled sweep{RESET}")
    sha = "31" * 20
    inject_dynamodb_faults(endpoint, 1000)
    try:
        event = merge(31, "master", "2026-11-22T21:00:00Z", sha)
        guid = event["headers"]["x-github-delivery"]
        print(f"  {DIM}(the local DynamoDB now answers 503 to every request){RESET}")
        send(fn, "pull request #31 merged into master, while DynamoDB is down", event, 503)
    finally:
        inject_dynamodb_faults(endpoint, 0)
    attempts = [d for d in github.hook_deliveries if d["guid"] == guid]
    if len(attempts) != 1 or not 500 <= attempts[0]["status_code"] < 600:
        failures.append(f"the failed delivery is recorded as {attempts}, expected one attempt answered 5xx")
        return
    failed = attempts[0]
    github.backdate(failed["id"], 120)
    print(f"  {DIM}GitHub's deliveries list: delivery {failed['id']} (guid {guid}) → {failed['status_code']}; "
          f"its delivered_at moved 2 minutes back, past the function's 60 s redelivery backoff{RESET}")
    result = sweep(fn, "the scheduled sweep (an EventBridge event): lists the App webhook's deliveries")
    if (result.get("redelivery") or {}).get("redelivered") != 1:
        failures.append(f"the sweep should have redelivered one delivery: {result}")
    # The sweep's one INFO line carries the redelivery counts ("sweep done"; older builds logged
    # a separate "redelivery sweep" line).
    line = last_log_line(fn_log.name, "redelivery sweep") or last_log_line(fn_log.name, "sweep done")
    if line and "redelivered" in json.dumps(line):
        print(f"      {DIM}function log: {short({k: v for k, v in line.items() if k not in ('timestamp', 'target')}, 200)}{RESET}")
    else:
        failures.append(f"the function logged no sweep line with the redelivery counts: {line}")
    if github.redeliveries != [failed["id"]]:
        failures.append(f"redeliveries asked for: {github.redeliveries}, expected [{failed['id']}]")
    print(f"  {DIM}… GitHub (the stand-in) re-sends delivery {failed['id']} to the function{RESET}")
    wait_until("the redelivery to be answered", lambda: any(
        d["guid"] == guid and d["redelivery"] for d in github.hook_deliveries))
    again = [d for d in github.hook_deliveries if d["guid"] == guid and d["redelivery"]]
    print(f"  redelivery of {guid}: {[(d['id'], d['status_code']) for d in again]}")
    if [d["status_code"] for d in again] != [200]:
        failures.append(f"the redelivery was answered {again}, expected one 200")
    created = [d for d in github.deployments.values() if d["sha"] == sha]
    if len(created) != 1:
        failures.append(f"{len(created)} deployments were created for the redelivered merge, expected 1")
    else:
        run_deployment(fn, github, created[0]["id"])
        got = timeline(github, [created[0]["id"]])
        if got[created[0]["id"]] != ["in_progress", "success"]:
            failures.append(f"the redelivered merge's deployment statuses are {got[created[0]['id']]}")
    result = sweep(fn, "the next scheduled sweep: nothing left to redeliver")
    if (result.get("redelivery") or {}).get("redelivered") != 0:
        failures.append(f"the second sweep redelivered again: {result}")

    print(f"\n{BOLD}GitHub App: installation tokens{RESET}")
    counts = {i: github.token_requests.count(i) for i in INSTALLATIONS}
    for installation, n in counts.items():
        print(f"  installation {installation} ({', '.join(INSTALLATIONS[installation])}): {n} token request(s)")
    if counts != {i: 1 for i in INSTALLATIONS}:
        failures.append(f"installation tokens requested {counts}, expected one per installation (one repository each)")
    for scope in github.token_scopes:
        names = [r.split("/", 1)[1] for r in INSTALLATIONS[scope["installation"]]]
        print(f"  {DIM}token for installation {scope['installation']}: repositories {scope['repositories']}, "
              f"permissions {scope['permissions']}{RESET}")
        if scope["repositories"] != names[:1] or not scope["permissions"]:
            failures.append(f"an installation token was not scoped to its repository and permissions: {scope}")
    refused = [c for c in github.calls if c["status"] in (401, 403)]
    if refused:
        failures.append(f"the stand-in refused the function's credentials: {refused}")


def main():
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is missing: run `make run` (it builds it)")
    run_dir = ROOT / ".run"
    run_dir.mkdir(exist_ok=True)
    ddb_log = open(run_dir / "dynamodb.log", "wb")
    fn_log = open(run_dir / "function.log", "wb")
    ddb, endpoint = start_dynamodb(ddb_log)
    aws_credentials = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
    if IAM_MODE:
        import iam_check
        roles, admin = iam_check.setup(endpoint, TABLE)
        READER.update(admin)
        problems = iam_check.probe(endpoint, TABLE, roles)
        failures.extend(problems)
        role = roles["template"]
        aws_credentials = {"AWS_ACCESS_KEY_ID": role["aws_access_key_id"],
                           "AWS_SECRET_ACCESS_KEY": role["aws_secret_access_key"],
                           "AWS_SESSION_TOKEN": role["aws_session_token"]}
        print(f"{BOLD}IAM enforced{RESET} by the local DynamoDB: the function runs as a role with exactly "
              f"template.yaml's policy (Get/Put/UpdateItem on the table, Query on its due index)"
              + (f"; {RED}probe failed: {problems}{RESET}" if problems else ""))
    if APP_MODE:
        from github_standin import StandInApp
        pem, public_key = app_key_pair()
        # Pages of 3 deliveries (GitHub: up to per_page=100), so the sweep follows the cursor.
        github = GitHubStandIn(on_call=show_call, app=StandInApp(APP_ID, public_key), installations=INSTALLATIONS,
                               page_size=3).start()
        credentials = {"GITHUB_APP_ID": str(APP_ID), "GITHUB_APP_PRIVATE_KEY": pem}
    else:
        github = GitHubStandIn(on_call=show_call).start()
        credentials = {"GITHUB_TOKEN": "ghp_local_demo_token"}
    hook = HookStandIn(secret=HOOK_SECRET, on_line=lambda line: print(f"      {DIM}hook: {line}{RESET}")).start()
    fn = LocalLambda([str(BINARY)], env={
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "HOOK_SIGNING_SECRET": HOOK_SECRET,
        **credentials,
        "GITHUB_API_URL": github.url,
        "DEPLOYMENTS_TABLE": TABLE,
        "ENVIRONMENT_URL": "https://hello-world.example.com",
        "DEPLOY_RULES": "@default=production,release/*=staging,qa-branch=qa",
        "DEPLOY_HOOK_URL_STAGING": f"{hook.url}/async?delay=3",
        "DEPLOY_HOOK_URL_QA": f"{hook.url}/never",
        "DEPLOY_TIMEOUT_MINUTES_QA": "0.05",
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        **aws_credentials,
        "AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "INFO",
    }, log=fn_log)
    api = LocalApi(fn).start()
    fn.env["PUBLIC_URL"] = api.url
    fn.start()
    function = fn
    if APP_MODE:
        github.hook_target = fn.invoke
        fn = AppWebhook(function, github)  # deliveries now go through GitHub's (the stand-in's) list
    mode = f", as GitHub App {APP_ID} (key generated for this run)" if APP_MODE else ""
    print(f"{BOLD}deploy-webhook, locally{RESET}: function {BINARY.relative_to(ROOT)} under a local Lambda "
          f"runtime, DynamoDB {endpoint}, GitHub stand-in {github.url}{mode}")
    try:
        load = lambda name: json.loads((ROOT / "events" / f"{name}.json").read_text())  # noqa: E731
        send(fn, "ping (events/ping.json)", load("ping"), 200, "pong")
        merged = load("pull_request_merged")
        created = send(fn, "pull request #2 merged into master (events/pull_request_merged.json)",
                       merged, 200, "processed")
        deployment_id = created["detail"]["deployments"][0]["deployment_id"]

        # GitHub now sends the `deployment` event for the deployment it created.
        dep = github.deployments[deployment_id]
        payload = events.load_payload("deployment.created")
        payload["deployment"].update(id=deployment_id, sha=dep["sha"], ref=dep["ref"], environment=dep["environment"],
                                     payload=dep["payload"], description=dep["description"])
        send(fn, f"deployment {deployment_id} created (GitHub's event for it)",
             events.api_gateway_event("deployment", payload, str(uuid.uuid4()), SECRET), 200, "processed")

        # ... and a `deployment_status` event for each status; the last one is recorded.
        last = github.statuses[deployment_id][-1]
        status_payload = events.load_payload("deployment_status.success")
        status_payload["deployment"].update(id=deployment_id, sha=dep["sha"], environment=dep["environment"])
        status_payload["deployment_status"].update({k: last[k] for k in (
            "id", "state", "creator", "description", "environment_url", "log_url", "target_url", "created_at", "updated_at")})
        send(fn, f"deployment_status {last['state']} for deployment {deployment_id}",
             events.api_gateway_event("deployment_status", status_payload, str(uuid.uuid4()), SECRET), 200, "processed")

        calls_before = len(github.calls)
        send(fn, "the merged PR redelivered (same X-GitHub-Delivery)", merged, 200, "duplicate")
        send(fn, "pull request closed without merging", load("pull_request_closed_unmerged"), 200, "ignored")
        send(fn, "a delivery signed with the wrong secret (events/bad_signature.json)", load("bad_signature"), 401)
        if len(github.calls) != calls_before:
            failures.append("a duplicate or refused delivery called GitHub")

        items = print_table(endpoint)
        deployments = [i for i in items if i["sk"].startswith("DEPLOYMENT#")]
        if len([i for i in items if i["sk"].startswith("CREATE#")]) != 1 or len(deployments) != 1 \
                or deployments[0].get("status_state") != "success":
            failures.append("the final DynamoDB state is not one created deployment in state success")
        api_calls = [c for c in github.calls if "/deployments" in c["path"]]  # App calls aside
        posted = [c for c in api_calls if c["method"] == "POST"]
        print(f"\n{BOLD}GitHub received {len(api_calls)} calls{RESET}: "
              + ", ".join(f"{c['method']} {c['path'].rsplit('/', 1)[-1]}"
                          + (f" ({c['body']['state']})" if c['body'] and 'state' in c['body'] else "")
                          for c in api_calls))
        if [c["body"].get("state") for c in posted[1:]] != ["in_progress", "success"]:
            failures.append("the deployment's statuses were not in_progress then success")
        async_flow(fn, github)
        if APP_MODE:
            app_flow(fn, github, endpoint, fn_log)
        timeout_flow(fn, github)
        commands_flow(fn, github)
        config_flow(fn, github, hook)
    finally:
        fn = function
        fn.stop()
        api.stop()
        hook.stop()
        github.stop()
        ddb.terminate()
        ddb.wait()
    print(f"\nFunction logs (JSON): {fn_log.name}")
    if IAM_MODE:
        log_text = Path(fn_log.name).read_text(errors="replace")
        if "AccessDenied" in log_text or "not authorized to perform" in log_text:
            failures.append("the function was refused an AWS call under the template's policy (AccessDenied in "
                            f"{fn_log.name})")
    if failures:
        print(f"{RED}{BOLD}FAILED{RESET}:\n  " + "\n  ".join(failures))
        return 1
    print(f"{GREEN}{BOLD}The whole flow worked.{RESET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
