#!/usr/bin/env python3
"""`make app-manifest`: creates deploy-webhook's GitHub App from github-app-manifest.json with
GitHub's manifest flow, and keeps its id, private key and webhook secret in files.

    tools/github_app_manifest.py [--webhook-url URL] [--org ORG] [--port 8792] [--out .run/github-app]

1. Serves, on http://localhost:PORT/, a page with a form that POSTs the manifest (with
   hook_attributes.url = URL, the stack's WebhookUrl output; without --webhook-url, the stack
   is not deployed yet: the App's webhook is created inactive, to be pointed at WebhookUrl and
   activated after `make deploy`) to GitHub's "new App" page: your
   account's (https://github.com/settings/apps/new) or --org's
   (https://github.com/organizations/ORG/settings/apps/new). You open it in your browser.
2. On GitHub you name the App and click "Create GitHub App"; GitHub sends your browser back to
   http://localhost:PORT/created?code=...&state=... (the manifest's redirect_url).
3. This script checks `state` and exchanges the code (valid one hour) at
   POST https://api.github.com/app-manifests/{code}/conversions. It writes the private key to
   OUT/app-<id>.pem and GitHub's generated webhook secret to OUT/webhook-secret (both mode 0600;
   neither is printed), the App's public details to OUT/app.json, prints the next steps and exits.

--github-url and --api-url point it at GitHub Enterprise Server (https://HOST, https://HOST/api/v3).
Only the Python standard library is used.
"""
import argparse
import html
import json
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from loopback_server import QuietThreadingHTTPServer  # noqa: E402


NOT_DEPLOYED_URL = "https://example.com/deploy-webhook-not-deployed-yet"


def manifest_for(webhook_url, homepage, redirect_url):
    manifest = json.loads((ROOT / "github-app-manifest.json").read_text())
    manifest["hook_attributes"] = {"url": webhook_url, "active": True} if webhook_url else \
        {"url": NOT_DEPLOYED_URL, "active": False}
    manifest["url"] = homepage
    manifest["redirect_url"] = redirect_url
    return manifest


def form_page(action, manifest):
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Create the deploy-webhook GitHub App</title></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 3em auto">
<h1>Create the deploy-webhook GitHub App</h1>
<p>The button sends this manifest to <code>{html.escape(action.split('?')[0])}</code>; GitHub then
lets you name the App and create it, and sends you back here.</p>
<pre style="background: #f4f4f4; padding: 1em">{html.escape(json.dumps(manifest, indent=2))}</pre>
<form action="{html.escape(action)}" method="post">
  <input type="hidden" name="manifest" value="{html.escape(json.dumps(manifest))}">
  <button type="submit" style="font-size: 1.2em">Create the App on GitHub</button>
</form>
</body></html>"""


def exchange(api_url, code):
    request = urllib.request.Request(f"{api_url}/app-manifests/{code}/conversions", method="POST", data=b"",
                                     headers={"Accept": "application/vnd.github+json",
                                              "X-GitHub-Api-Version": "2022-11-28",
                                              "User-Agent": "deploy-webhook-app-manifest"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def save(app, out):
    out.mkdir(parents=True, exist_ok=True)
    key_path, secret_path = out / f"app-{app['id']}.pem", out / "webhook-secret"
    write_secret(key_path, app["pem"])
    write_secret(secret_path, app["webhook_secret"])
    public = {k: app.get(k) for k in ("id", "slug", "name", "html_url", "created_at")}
    owner = app.get("owner") or {}
    public["owner"] = owner.get("login")
    public["settings_url"] = (f"https://github.com/organizations/{owner.get('login')}/settings/apps/{app.get('slug')}"
                              if owner.get("type") == "Organization" else
                              f"https://github.com/settings/apps/{app.get('slug')}")
    (out / "app.json").write_text(json.dumps(public, indent=2) + "\n")
    return public, key_path, secret_path


def next_steps(public, key_path, secret_path, webhook_url):
    rel = lambda p: os.path.relpath(p, Path.cwd())  # noqa: E731
    hook = (f"  5. Its webhook already points at {webhook_url}: Settings → Advanced → Recent Deliveries\n"
            f"     shows each delivery.") if webhook_url else (
            f"  5. After the deploy: {public['settings_url']} → Webhook: tick Active,\n"
            f"     Webhook URL = the stack's WebhookUrl output, Save changes (keep the secret as it is).")
    return f"""
GitHub App {public['slug']} (id {public['id']}) created: {public['html_url']}
  private key:    {rel(key_path)}   (mode 0600; not printed)
  webhook secret: {rel(secret_path)}   (mode 0600; not printed)

Next (README "Install as a GitHub App"):
  1. Install it on repositories: {public['html_url']}/installations/new
  2. Keep the key in Secrets Manager:
       aws secretsmanager create-secret --name deploy-webhook/github-app-key --secret-string file://{rel(key_path)}
  3. make deploy with GitHubAppId={public['id']}, GitHubAppPrivateKeySecretId=deploy-webhook/github-app-key
     and GitHubWebhookSecret = the contents of {rel(secret_path)} (the App signs with it).
  4. Delete {rel(key_path)} once it is in Secrets Manager.
{hook}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhook-url", help="the stack's WebhookUrl output, if it is deployed already")
    parser.add_argument("--org", help="create the App in this organization (default: your account)")
    parser.add_argument("--homepage", help="the App's homepage URL (default: the webhook URL's origin)")
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--out", default=str(ROOT / ".run" / "github-app"))
    parser.add_argument("--github-url", default="https://github.com")
    parser.add_argument("--api-url", default="https://api.github.com")
    args = parser.parse_args()
    hook = urlparse(args.webhook_url or NOT_DEPLOYED_URL)
    if hook.scheme != "https" or not hook.netloc or "REPLACE" in hook.netloc:
        raise SystemExit(f"--webhook-url must be the stack's https WebhookUrl output, got {args.webhook_url!r}")
    state = secrets.token_urlsafe(16)
    base = f"{args.github_url.rstrip('/')}/organizations/{args.org}" if args.org else args.github_url.rstrip("/")
    action = f"{base}/settings/apps/new?state={state}"
    redirect = f"http://localhost:{args.port}/created"
    homepage = args.homepage or (f"{hook.scheme}://{hook.netloc}" if args.webhook_url else "https://example.com")
    manifest = manifest_for(args.webhook_url, homepage, redirect)
    done = threading.Event()
    result = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _page(self, code, body):
            raw = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/":
                return self._page(200, form_page(action, manifest))
            if url.path != "/created":
                return self._page(404, "not found")
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if query.get("state") != state or not query.get("code"):
                return self._page(400, "<p>This is not the answer to the form this script served (state differs).</p>")
            try:
                app = exchange(args.api_url.rstrip("/"), query["code"])
            except (urllib.error.URLError, ValueError) as err:
                result["error"] = f"the code exchange failed: {err}"
                self._page(502, f"<p>{html.escape(result['error'])}; see the terminal.</p>")
                return done.set()
            result["saved"] = save(app, Path(args.out))
            self._page(200, f"<p>GitHub App <b>{html.escape(app.get('slug', ''))}</b> created. "
                            "Back to the terminal for the next steps.</p>")
            done.set()

    server = QuietThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"Open http://localhost:{args.port}/ in your browser and click \"Create the App on GitHub\"\n"
          f"(the App's webhook: {args.webhook_url or 'inactive until the stack is deployed'}; "
          f"owner: {args.org or 'your account'}). Waiting… (Ctrl-C stops)",
          flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.shutdown()
    if "error" in result:
        print(result["error"], file=sys.stderr)
        return 1
    print(next_steps(*result["saved"], args.webhook_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
