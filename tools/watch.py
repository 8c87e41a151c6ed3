#!/usr/bin/env python3
"""`make watch`, `make invoke` and `make reset`: the function under `cargo lambda watch` with the
local stand-ins its .env points at, without any secret on the terminal.

    watch.py [watch]        validate .env, start the local DynamoDB, the GitHub stand-in and the
                            deploy-hook stand-in(s) on the loopback ports .env names, build the
                            debug binary, start it once to catch configuration errors, then run
                            `cargo lambda watch`; restart the function when .env changes; Ctrl-C
                            stops everything
    watch.py invoke FILE    send one event to the running watch and print the answer
    watch.py reset          empty the local DynamoDB table and the GitHub stand-in's deployments

How secrets are kept off the terminal:
  * .env is never exported into cargo-lambda's own environment: only this script reads it (for
    the ports and the table), and cargo-lambda gets it with --env-file, which hands it to the
    function only. cargo-lambda also gets no RUST_LOG (not even the shell's): at INFO its file
    watcher logs the function's whole environment.
  * every line the children print passes through here, and any value of a .env key that names a
    secret (*SECRET*, *TOKEN*, *PASSWORD*, ...) is replaced by *** before it is shown. A
    replacement is counted and reported at exit: it means the first rule failed somewhere.
While the function runs, it is also sent EventBridge's "Scheduled Event" every SWEEP_EVERY seconds
(default 60, 0 = never), as the template's schedule does on AWS: the sweep that times out
deployments whose hook never called back.
Settings: ENV_FILE (default .env), WATCH_PORT (default 9000), INVOKE_TIMEOUT (default 120 s),
SWEEP_EVERY (default 60 s).
`tools/check_watch_secrets.py` (part of `make test`) checks all this with sentinel secrets.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

FUNCTION = "deploy-webhook"
REQUIRED = ("GITHUB_WEBHOOK_SECRET", "DEPLOYMENTS_TABLE")
# .env's loopback ports are written for WATCH_PORT=9000 (.env.example: PUBLIC_URL on 9000): with
# another WATCH_PORT, 9000 becomes that port and every other 127.0.0.1 port moves by PORT_STEP per
# step, so that a second `make watch WATCH_PORT=9001` needs nothing else (8000 -> 8010,
# 8790 -> 8800, 8791 -> 8801). An env file with no URL on 9000 is taken as written for its watch.
BASE_WATCH_PORT = 9000
PORT_STEP = 10
SECRET_KEY = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|PRIVATE|CREDENTIAL|API_KEY", re.I)
MIN_REDACTED_LENGTH = 6  # shorter values ("local") would blank out ordinary words
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
BOLD, DIM, YELLOW, RED, GREEN, RESET = ("\033[1m", "\033[2m", "\033[33m", "\033[31m", "\033[32m", "\033[0m") \
    if sys.stdout.isatty() else ("", "", "", "", "", "")


# ------------------------------------------------------------------------------ the .env file
def parse_env_file(path):
    """(variables, problems) of a KEY=VALUE file as cargo-lambda reads it (dotenv: comments,
    blank lines, optional `export `, single or double quotes). Problems never quote a value."""
    variables, problems = {}, []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        return {}, [f"{path}: {err.strerror}"]
    numbered = iter(enumerate(lines, 1))
    for number, line in numbered:
        text = line.strip()
        # A double-quoted value may span lines (a GitHub App's private key, as its .pem has it).
        if re.match(r'^(export\s+)?[A-Za-z_][A-Za-z0-9_.]*\s*=\s*"', text) \
                and not re.search(r'=\s*"(?:[^"\\]|\\.)*"', text):
            for _, more in numbered:
                text += "\n" + more.rstrip()
                if re.search(r'(?<!\\)"', more):
                    break
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not KEY.match(key):
            problems.append(f"{path} line {number}: not KEY=VALUE")
            continue
        if value[:1] == "'":
            end = value.find("'", 1)
            if end < 0:
                problems.append(f"{path} line {number} ({key}): the quote is not closed")
                continue
            value = value[1:end]
        elif value[:1] == '"':
            match = re.match(r'"((?:[^"\\]|\\.)*)"', value)
            if not match:
                problems.append(f"{path} line {number} ({key}): the quote is not closed")
                continue
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), match[1])
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        variables[key] = value
    return variables, problems


def env_file_text(variables):
    """The variables as an env file cargo-lambda's parser reads back exactly (it rejects an
    unquoted '=' or space, and expands $ and backslashes inside double quotes): single quotes,
    or double quotes for a value holding a single quote. Raises ValueError, naming the key only,
    for the one thing it cannot carry."""
    lines = []
    for key, value in variables.items():
        if key == "GITHUB_APP_PRIVATE_KEY":
            value = value.strip().replace("\n", "\\n")  # one line with literal \n: the function takes that too
        if "'" not in value and "\n" not in value:
            lines.append(f"{key}='{value}'")
        elif not re.search(r'[$\\\n]', value):
            lines.append(f'{key}="{value.replace(chr(34), chr(92) + chr(34))}"')
        else:
            raise ValueError(f"{key}: cargo-lambda cannot be given a value holding both ' and $, \\ or a newline")
    return "".join(line + "\n" for line in lines)


def secret_values(variables):
    """The values to keep off the terminal: those of secret-named keys, each item of a
    comma-separated list of them (GITHUB_WEBHOOK_SECRET during a rotation), and each line of a
    multi-line one (a GitHub App's private key)."""
    found = set()
    for key, value in variables.items():
        if SECRET_KEY.search(key):
            for item in [value, *value.split(","), *value.replace("\\n", "\n").splitlines()]:
                item = item.strip()
                if len(item) >= MIN_REDACTED_LENGTH:
                    found.add(item)
    return sorted(found, key=len, reverse=True)


def loopback_port(url):
    """The port of an http URL on this machine, else None."""
    try:
        parsed = urlparse(url)
        if parsed.scheme == "http" and parsed.hostname in LOOPBACK and parsed.port:
            return parsed.port
    except ValueError:
        pass
    return None


def shift_ports(variables, watch_port):
    """.env's variables with their 127.0.0.1 ports moved for this WATCH_PORT (see BASE_WATCH_PORT),
    and a note saying so (None when WATCH_PORT is the base one)."""
    pattern = re.compile(r"^(http://(?:127\.0\.0\.1|localhost|\[::1\]):)(\d+)")
    written_for_base = any((m := pattern.match(v)) and int(m[2]) == BASE_WATCH_PORT for v in variables.values())
    if watch_port == BASE_WATCH_PORT or not written_for_base:
        return variables, None  # the file's ports are already this watch's own (no URL on 9000)
    offset = (watch_port - BASE_WATCH_PORT) * PORT_STEP
    moved, shifted = {}, {}
    for key, value in variables.items():
        match = pattern.match(value)
        if match:
            port = int(match[2])
            new = watch_port if port == BASE_WATCH_PORT else port + offset
            if 0 < new < 65536:
                moved[port] = new
                value = f"{match[1]}{new}{value[match.end():]}"
        shifted[key] = value
    if not moved:
        return shifted, None
    ports = ", ".join(f"{a} -> {b}" for a, b in sorted(moved.items()))
    return shifted, f"WATCH_PORT={watch_port}: the 127.0.0.1 ports of the env file moved ({ports})"


def auth_mode(variables):
    """"token", "app", or None (with what is wrong)."""
    token = bool(variables.get("GITHUB_TOKEN"))
    app = bool(variables.get("GITHUB_APP_ID")) and bool(variables.get("GITHUB_APP_PRIVATE_KEY"))
    if token and (variables.get("GITHUB_APP_ID") or variables.get("GITHUB_APP_PRIVATE_KEY")):
        return None, "set either GITHUB_TOKEN or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY, not both"
    if token:
        return "token", None
    if app:
        return "app", None
    if variables.get("GITHUB_APP_ID") or variables.get("GITHUB_APP_PRIVATE_KEY"):
        return None, "GitHub App mode needs both GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY"
    return None, "GITHUB_TOKEN (or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY) is missing or empty"


# Repositories' files the GitHub stand-in serves: edit
# local/github/Codertocat/Hello-World/.github/deploy-webhook.yml (the sample events' repository)
# and the next delivery reads it (watch sets CONFIG_RECHECK_SECONDS=0 unless .env sets it).
ROOT_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT_DIR / "local" / "github"
SAMPLE_CONFIG = CONFIG_DIR / "Codertocat" / "Hello-World" / ".github" / "deploy-webhook.yml"
SAMPLE_CONFIG_TEXT = """# yaml-language-server: $schema=../../../../../schema/deploy-webhook.schema.json
# The sample repository's configuration, served by make watch's GitHub stand-in (README:
# "Configuration as code"). Edit it and send an event: the next delivery reads it. Everything
# here is commented out, so the stack's settings in .env apply. For example:
#
# environments:
#   docs:
#     branches: [master]
#     action: none
# commands:
#   permissions: [admin]
"""


def ensure_sample_config():
    """The sample repository's file, created once (commented out) for the user to edit."""
    if not SAMPLE_CONFIG.exists():
        SAMPLE_CONFIG.parent.mkdir(parents=True, exist_ok=True)
        SAMPLE_CONFIG.write_text(SAMPLE_CONFIG_TEXT)
    return SAMPLE_CONFIG


def plan(variables, env_file, watch_port):
    """(services, problems, warnings): what to start for this .env, and what stops it."""
    problems, warnings, services = [], [], []
    for key in REQUIRED:
        if not variables.get(key):
            problems.append(f"{key} is missing or empty in {env_file} (see .env.example)")
    mode, auth_problem = auth_mode(variables)
    if auth_problem:
        problems.append(f"{auth_problem} in {env_file} (see .env.example)")
    log_level, rust_log = variables.get("AWS_LAMBDA_LOG_LEVEL"), variables.get("RUST_LOG", "")
    bare = [d for d in rust_log.split(",") if d.strip() and "=" not in d]
    if log_level and bare:
        warnings.append(f"RUST_LOG={','.join(bare)} is a bare level, which counts only without AWS_LAMBDA_LOG_LEVEL "
                        f"({log_level} here wins): set AWS_LAMBDA_LOG_LEVEL, or name the crate "
                        "(RUST_LOG=deploy_webhook=debug)")
    py = str(ROOT / ".venv" / "bin" / "python")
    if not Path(py).exists():
        py = sys.executable

    ddb_url = variables.get("AWS_ENDPOINT_URL_DYNAMODB")
    ddb_port = loopback_port(ddb_url or "")
    if ddb_port:
        services.append({"name": "local DynamoDB", "key": "AWS_ENDPOINT_URL_DYNAMODB", "port": ddb_port,
                         "argv": [py, "tools/local_dynamodb.py", "--port", str(ddb_port),
                                  "--table", variables.get("DEPLOYMENTS_TABLE") or "deploy-webhook-local"]})
    elif ddb_url:
        warnings.append(f"AWS_ENDPOINT_URL_DYNAMODB is not an http://127.0.0.1:PORT URL: no local DynamoDB started")
    else:
        warnings.append("AWS_ENDPOINT_URL_DYNAMODB is not set: the function uses the real DynamoDB of your AWS account")

    gh_url = variables.get("GITHUB_API_URL")
    gh_port = loopback_port(gh_url or "")
    if gh_port:
        ensure_sample_config()
        argv = [py, "tools/github_standin.py", "--port", str(gh_port), "--seed-samples", "--files-dir", str(CONFIG_DIR),
                "--send-deployment-events", f"http://127.0.0.1:{watch_port}/2015-03-31/functions/{FUNCTION}/invocations"]
        # Secrets go in the environment, never on a command line (ps shows those).
        env = {"GITHUB_WEBHOOK_SECRET": variables.get("GITHUB_WEBHOOK_SECRET", "")}
        if mode == "app":
            argv += ["--app-id", variables["GITHUB_APP_ID"]]
            env["GITHUB_APP_PRIVATE_KEY"] = variables["GITHUB_APP_PRIVATE_KEY"]
        services.append({"name": "GitHub stand-in", "key": "GITHUB_API_URL", "port": gh_port, "argv": argv,
                         "env": env, "announces": True})
    else:
        warnings.append(f"GITHUB_API_URL is {'not set' if not gh_url else 'not on 127.0.0.1'}: the function calls "
                        "the real GitHub with GITHUB_TOKEN")

    hook_ports = {}
    for key, url in sorted(variables.items()):
        if key == "DEPLOY_HOOK_URL" or key.startswith("DEPLOY_HOOK_URL_"):
            port = loopback_port(url)
            if port == watch_port:
                problems.append(f"{key} points at port {watch_port}, cargo-lambda's own port: every deployment "
                                f"would fail. Use the hook stand-in (http://127.0.0.1:8791/sync, see .env.example)")
            elif port:
                hook_ports.setdefault(port, key)
    for port, key in sorted(hook_ports.items()):
        # The hook's own secret (HOOK_SIGNING_SECRET_<ENV>, else HOOK_SIGNING_SECRET), never the
        # webhook secret: the function signs the calls, and verifies the callbacks, with it.
        secret_key = "HOOK_SIGNING_SECRET" + key[len("DEPLOY_HOOK_URL"):]
        secret = variables.get(secret_key) or variables.get("HOOK_SIGNING_SECRET", "")
        if not secret:
            problems.append(f"{key} is set but neither {secret_key} nor HOOK_SIGNING_SECRET is: the function "
                            "signs hook calls and verifies callbacks with it (see .env.example)")
        services.append({"name": "deploy-hook stand-in", "key": key, "port": port, "announces": True,
                         "argv": [py, "tools/hook_standin.py", "--port", str(port)],
                         # the secret goes in the environment, never on a command line (ps shows those)
                         "env": {"HOOK_SIGNING_SECRET": secret}})

    public = variables.get("PUBLIC_URL")
    if public and loopback_port(public) not in (None, watch_port):
        warnings.append(f"PUBLIC_URL is on 127.0.0.1 but not on WATCH_PORT {watch_port}: "
                        "deploy-hook callbacks will not reach the function")

    seen = {watch_port: "WATCH_PORT (cargo-lambda)"}
    for service in services:
        other = seen.setdefault(service["port"], service["key"])
        if other != service["key"]:
            problems.append(f"{service['key']} and {other} both use port {service['port']}")
    return services, problems, warnings


def service_key(service):
    return tuple(service["argv"]) + tuple(sorted((service.get("env") or {}).items()))


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------ output
class Output:
    """Prints the children's lines, with secret values replaced by ***."""

    def __init__(self):
        self.lock = threading.Lock()
        self.secrets = []
        self.redactions = 0
        self.on_line = None

    def redact(self, text):
        for secret in self.secrets:
            if secret in text:
                self.redactions += text.count(secret)
                text = text.replace(secret, "***")
        return text

    def say(self, text, colour=""):
        with self.lock:
            text = self.redact(text)
            sys.stdout.write(f"{colour}{text}{RESET if colour else ''}\n")
            sys.stdout.flush()

    def relay(self, stream, prefix=""):
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if re.fullmatch(r"PORT \d+", line):
                continue  # the local DynamoDB's start-up handshake, announced in our own words
            shown = tidy(line)
            if shown is not None:
                with self.lock:
                    sys.stdout.write(f"{prefix}{self.redact(shown)}\n")
                    sys.stdout.flush()
            line = self.redact(line)
            if self.on_line:
                self.on_line(line)
        stream.close()


ANSI = re.compile(r"\x1b\[[0-9;]*m")
# cargo-lambda's own lines that say nothing a person acts on: its advice about a concurrency
# setting it reads, and the forced stop of the old function process at each rebuild.
CARGO_LAMBDA_NOISE = re.compile(r"AWS_LAMBDA_MAX_CONCURRENCY|concurrency-tokio|command killed.*ForceStop|"
                                r"terminating lambda scheduler")


def tidy(line):
    """What the watch terminal shows of a child's line: None to leave it out. Left out: the
    function's metric lines (CloudWatch EMF JSON, for the dashboard on AWS) and cargo-lambda's
    noise above; dimmed: cargo-lambda's other lines and the span fields of the function's."""
    plain = ANSI.sub("", line)
    if plain.startswith("{") and '"_aws":{"CloudWatchMetrics"' in plain:
        return None
    if CARGO_LAMBDA_NOISE.search(plain):
        return None
    if re.match(r"^\s*(INFO|WARN|DEBUG|TRACE)\s+(starting|invocation|request|function|recompiling|spawning|"
                r"terminating)", plain):
        text = plain.strip()
        return f"{DIM}cargo-lambda: {text[:117] + '...' if len(text) > 120 else text}{RESET}"
    # The function's text logs: `LEVEL span{fields}:span{fields}: message fields`. The runtime's
    # own span (request and X-Ray trace ids) is left out; the delivery's (its id and event) is
    # dimmed, so the message stands out.
    plain = re.sub(r"Lambda runtime invoke\{[^}]*\}:", "", plain)
    match = re.match(r"^(\s*(?:INFO|WARN|ERROR|DEBUG|TRACE)\s+)((?:[\w:]+\{[^}]*\}:?)+:?\s*)(.*)$", plain)
    if match:
        return f"{match[1]}{DIM}{match[2]}{RESET}{match[3]}"
    return plain


def child_env(variables, extra=None):
    """This process's environment for a child, minus RUST_LOG (cargo-lambda's file watcher logs
    the function's environment at INFO) and minus every key .env sets (the function gets those
    from --env-file only)."""
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG" and k not in variables}
    env.update(extra or {})
    return env


def spawn(out, argv, env, prefix=""):
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    thread = threading.Thread(target=out.relay, args=(proc.stdout, prefix), daemon=True)
    thread.start()
    proc.relay_thread = thread
    return proc


def stop(procs, first_signal=signal.SIGTERM, grace=10.0):
    """Stops processes (each in its own process group), then waits for their output."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, first_signal)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        proc.relay_thread.join(2)
        # the group may hold grandchildren (cargo-lambda's function process)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ------------------------------------------------------------------------------ watch
class Watch:
    def __init__(self, env_file, watch_port):
        self.env_file = Path(env_file)
        self.watch_port = watch_port
        self.out = Output()
        self.out.on_line = self.on_line
        self.stopping = threading.Event()
        self.services = {}      # tuple(argv) -> process
        self.cargo_lambda = None
        self.built = False
        self.init_failed_at = None
        # What cargo-lambda reads with --env-file: .env rewritten so its parser reads every value
        # back exactly (.env itself may use any dotenv syntax); private to this user, removed at exit.
        self.private_dir = Path(tempfile.mkdtemp(prefix="deploy-webhook-watch-"))
        self.cargo_env_file = self.private_dir / "function.env"

    def on_line(self, line):
        if "configuration:" in line and ("ERROR" in line or "error" in line):
            self.init_failed_at = time.monotonic()
            self.out.say(f"⚠ the function failed to start: fix {self.env_file} (watch restarts the function "
                         "when you save it). Until then make invoke gets no answer.", BOLD + RED)

    def fingerprint(self):
        try:
            return self.env_file.read_bytes()
        except OSError:
            return None

    def wait_for_change(self, since):
        while not self.stopping.is_set():
            if self.fingerprint() != since:
                return True
            if self.cargo_lambda is not None and self.cargo_lambda.poll() is not None:
                return False
            self.stopping.wait(1.0)
        return False

    def ensure_services(self, services, variables):
        """Starts the services this .env needs (keeping those that did not change), stops the rest."""
        wanted = {service_key(s): s for s in services}
        for key in [k for k in self.services if k not in wanted]:
            stop([self.services.pop(key)])
        started = []
        for key, service in wanted.items():
            proc = self.services.get(key)
            if proc is not None and proc.poll() is None:
                continue
            if port_in_use(service["port"]):
                return f"port {service['port']} ({service['key']}) is already in use: is another make watch running?"
            self.services[key] = spawn(self.out, service["argv"], child_env(variables, service.get("env")))
            started.append(service)
        deadline = time.monotonic() + 30
        for service in started:
            while not port_in_use(service["port"]):
                if self.services[service_key(service)].poll() is not None or time.monotonic() > deadline:
                    return f"the {service['name']} on port {service['port']} did not start (see above)"
                time.sleep(0.1)
            if not service.get("announces"):  # the stand-ins announce themselves, once
                self.out.say(f"{service['name']} on http://127.0.0.1:{service['port']} ({service['key']})")
        return None

    def build(self, variables):
        if not (ROOT / "target" / "debug" / FUNCTION).exists():
            self.out.say("building the debug binary: the first build takes 3-4 minutes on 2 cores (once; make run "
                         "and make test reuse it) ...", BOLD)
        else:
            self.out.say("building the debug binary (cargo build) ...")
        proc = spawn(self.out, ["cargo", "build", "--locked", "--bin", FUNCTION], child_env(variables))
        while proc.poll() is None:
            if self.stopping.wait(0.2):
                stop([proc], signal.SIGINT)
                return False
        proc.relay_thread.join(2)
        if proc.returncode != 0:
            self.out.say("the build failed (above): cargo lambda watch rebuilds when you save a source file",
                         BOLD + RED)
            return False
        return True

    def preflight(self, variables):
        """Starts the binary once with .env, as Lambda would, to catch a configuration error now
        rather than as an invoke that never returns. Returns None or the error text."""
        from lambda_local import FunctionError, LocalLambda
        with tempfile.TemporaryFile() as log:
            fn = LocalLambda([str(ROOT / "target" / "debug" / FUNCTION)], env=variables, log=log)
            try:
                fn.start()
                fn.wait_ready(20)
                return None
            except FunctionError as err:
                log.seek(0)
                lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
                return "\n".join(lines[-5:]) or str(err)
            finally:
                fn.stop()

    def start_cargo_lambda(self, variables):
        """Starts cargo lambda watch; returns None once it listens, else what went wrong."""
        # Locally every delivery reads the repository's file again, so an edit shows at once.
        variables = {"CONFIG_RECHECK_SECONDS": "0", **variables}
        fd = os.open(self.cargo_env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(env_file_text(variables))
        argv = ["cargo", "lambda", "watch", "--env-file", str(self.cargo_env_file), "--invoke-address", "127.0.0.1",
                "--invoke-port", str(self.watch_port), "--color", "always" if sys.stdout.isatty() else "never"]
        self.init_failed_at = None
        self.cargo_lambda = spawn(self.out, argv, child_env(variables))
        deadline = time.monotonic() + 60
        while not port_in_use(self.watch_port):
            if self.cargo_lambda.poll() is not None:
                code = self.cargo_lambda.returncode
                self.cargo_lambda.relay_thread.join(2)
                self.cargo_lambda = None
                return f"cargo lambda watch exited with {code} (see above)"
            if time.monotonic() > deadline or self.stopping.wait(0.1):
                return None if self.stopping.is_set() else "cargo lambda watch did not listen within 60 s"
        return None

    def stop_cargo_lambda(self):
        if self.cargo_lambda is not None:
            stop([self.cargo_lambda], signal.SIGINT)
            self.cargo_lambda = None

    def sweeps(self, every):
        """Sends the scheduled event every `every` seconds while cargo lambda watch listens."""
        while not self.stopping.wait(every):
            if self.cargo_lambda is None or not port_in_use(self.watch_port):
                continue
            event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                     "source": "aws.events", "account": "123456789012",
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": "us-east-1",
                     "resources": ["arn:aws:events:us-east-1:123456789012:rule/deploy-webhook-local-sweep"],
                     "detail": {}}
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.watch_port}/2015-03-31/functions/{FUNCTION}/invocations",
                data=json.dumps(event).encode(), method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=max(30, every)) as response:
                    response.read()
            except (OSError, ValueError) as err:
                self.out.say(f"note: the scheduled sweep invoke failed: {err}", YELLOW)

    def run(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stopping.set())
        every = float(os.environ.get("SWEEP_EVERY") or 60)
        if every > 0:
            threading.Thread(target=self.sweeps, args=(every,), daemon=True).start()
        try:
            return self.loop()
        finally:
            self.out.say("stopping ...")
            self.stop_cargo_lambda()
            stop(list(self.services.values()))
            for leftover in self.private_dir.glob("*"):
                leftover.unlink()
            self.private_dir.rmdir()
            if self.out.redactions:
                self.out.say(f"{self.out.redactions} occurrence(s) of secret values were replaced by *** in the "
                             "output above: please report this", BOLD + RED)
            self.out.say("stopped")

    def loop(self):
        first = True
        while not self.stopping.is_set():
            since = self.fingerprint()
            variables, problems = parse_env_file(self.env_file)
            self.out.secrets = secret_values(variables)
            variables, moved = shift_ports(variables, self.watch_port)
            if moved:
                self.out.say(f"note: {moved}", YELLOW)
            services, more, warnings = plan(variables, self.env_file, self.watch_port)
            problems += more
            for warning in warnings:
                self.out.say(f"note: {warning}", YELLOW)
            if not problems and port_in_use(self.watch_port) and self.cargo_lambda is None:
                problems.append(f"port {self.watch_port} (WATCH_PORT) is already in use: is another make watch "
                                "running? (make watch WATCH_PORT=9001 picks another)")
            if not problems:
                error = self.ensure_services(services, variables)
                if error:
                    problems.append(error)
            if not problems and not self.built:
                self.built = self.build(variables)
                if self.stopping.is_set():
                    return 130
            if not problems and self.built:
                error = self.preflight(variables)
                if error:
                    problems.append(f"the function does not start with {self.env_file}:\n{error}")
            if not problems:
                try:
                    env_file_text(variables)
                except ValueError as err:
                    problems.append(str(err))
            if problems:
                self.stop_cargo_lambda()
                for problem in problems:
                    self.out.say(f"✗ {problem}", BOLD + RED)
                self.out.say(f"waiting for you to fix {self.env_file} (saved changes are picked up; Ctrl-C stops)",
                             BOLD)
                self.wait_for_change(since)
                continue
            if not first:
                self.out.say(f"restarting the function with the new {self.env_file}", BOLD)
            self.stop_cargo_lambda()
            error = self.start_cargo_lambda(variables)
            if self.stopping.is_set():
                break
            if error:
                self.stop_cargo_lambda()
                self.out.say(f"✗ {error}", BOLD + RED)
                self.out.say(f"waiting for a change of {self.env_file} to try again (Ctrl-C stops)", BOLD)
                self.wait_for_change(since)
                continue
            self.out.say(f"ready: cargo lambda watch on http://127.0.0.1:{self.watch_port}. In another terminal: "
                         "make invoke EVENT=events/ping.json", BOLD + GREEN)
            if first and SAMPLE_CONFIG.exists():
                self.out.say(f"the sample repository's configuration: {SAMPLE_CONFIG.relative_to(ROOT_DIR)} "
                             "(edit it; the next delivery reads it)")
            first = False
            changed = self.wait_for_change(since)
            if changed:
                self.out.say(f"{self.env_file} changed", BOLD)
            elif not self.stopping.is_set():
                code = self.cargo_lambda.wait()
                self.cargo_lambda.relay_thread.join(2)
                self.cargo_lambda = None
                self.out.say(f"✗ cargo lambda watch exited with {code} (see above); waiting for a change of "
                             f"{self.env_file} to start it again (Ctrl-C stops)", BOLD + RED)
                self.wait_for_change(since)
        return 0


# ------------------------------------------------------------------------------ invoke, reset
def invoke(path, watch_port, timeout):
    try:
        event = json.loads(Path(path).read_text())
    except OSError as err:
        sys.exit(f"{path}: {err.strerror}")
    except ValueError as err:
        sys.exit(f"{path} is not JSON: {err}")
    if not port_in_use(watch_port):
        sys.exit(f"nothing answers on 127.0.0.1:{watch_port}: start `make watch` in another terminal first. "
                 "If it runs, look at its terminal: it may be waiting for you to fix .env, or still building.")
    request = urllib.request.Request(
        f"http://127.0.0.1:{watch_port}/2015-03-31/functions/{FUNCTION}/invocations",
        data=json.dumps(event).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
    except (TimeoutError, socket.timeout):
        sys.exit(f"no answer within {timeout} s. Look at the `make watch` terminal: the function may still be "
                 "building after a code change, or it failed to start. (INVOKE_TIMEOUT=300 waits longer.)")
    except OSError as err:
        sys.exit(f"the invoke failed: {err}. Look at the `make watch` terminal.")
    try:
        answer = json.loads(raw)
    except ValueError:
        print(raw.decode(errors="replace"))
        return 1
    if isinstance(answer, dict) and "statusCode" in answer:
        body = answer.get("body") or ""
        try:
            # As a person reads it: emoji and accents as they are, not \u escapes.
            body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        print(f"{answer['statusCode']}\n{body}")
        return 0
    print(json.dumps(answer, indent=2, ensure_ascii=False))  # the function's error, or another kind of answer
    return 1


def reset(env_file):
    variables, problems = parse_env_file(env_file)
    if problems:
        sys.exit("\n".join(problems))
    variables, _ = shift_ports(variables, int(os.environ.get("WATCH_PORT") or BASE_WATCH_PORT))
    done = []
    ddb_port = loopback_port(variables.get("AWS_ENDPOINT_URL_DYNAMODB", ""))
    table = variables.get("DEPLOYMENTS_TABLE")
    if ddb_port and table and port_in_use(ddb_port):
        import local_dynamodb
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{ddb_port}/moto-api/reset", data=b"", method="POST"), timeout=10).read()
        local_dynamodb.create_table(f"http://127.0.0.1:{ddb_port}", table)
        done.append(f"local DynamoDB table {table} emptied")
    gh_port = loopback_port(variables.get("GITHUB_API_URL", ""))
    if gh_port and port_in_use(gh_port):
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{gh_port}/_local/reset", data=b"", method="POST"), timeout=10).read()
        done.append("GitHub stand-in's deployments forgotten")
    if not done:
        sys.exit("nothing to reset: make watch is not running")
    print("; ".join(done))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", nargs="?", default="watch", choices=["watch", "invoke", "reset"])
    parser.add_argument("event", nargs="?", help="the event file (invoke)")
    args = parser.parse_args()
    env_file = os.environ.get("ENV_FILE") or ".env"
    watch_port = int(os.environ.get("WATCH_PORT") or 9000)
    os.chdir(ROOT)
    if args.command == "invoke":
        if not args.event:
            parser.error("usage: watch.py invoke events/<file>.json")
        return invoke(args.event, watch_port, float(os.environ.get("INVOKE_TIMEOUT") or 120))
    if args.command == "reset":
        return reset(env_file)
    return Watch(env_file, watch_port).run()


if __name__ == "__main__":
    sys.exit(main())
