#!/usr/bin/env python3
"""A local AWS Lambda Runtime API (2018-06-01): runs the real function binary as Lambda would.

One LocalLambda is one execution environment: one process, one invocation at a time, its own
Runtime API on 127.0.0.1 (AWS_LAMBDA_RUNTIME_API). It hands events to the process's
`GET /runtime/invocation/next` long poll and collects what it posts back.

    fn = LocalLambda(["target/release/deploy-webhook"], env={...}).start()
    response = fn.invoke(api_gateway_event)   # the function's API Gateway response, as a dict
    fn.stop()

Only the Python standard library is used.
"""
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

from loopback_server import QuietThreadingHTTPServer

API = "/2018-06-01/runtime"


class FunctionError(Exception):
    """The function reported an error, crashed, or timed out."""


class LocalLambda:
    def __init__(self, command, env=None, name="deploy-webhook", timeout=15.0, log=None):
        self.command = command
        self.env = env or {}
        self.name = name
        self.timeout = timeout
        self.log = log
        self.events = queue.Queue()
        self.results = {}
        self.cond = threading.Condition()
        self.init_error = None
        self.proc = None
        self.spawned_at = None
        # When the process first asked for an event: the end of its init.
        self.first_next_at = None
        self.server = None

    # -- the Runtime API ------------------------------------------------------------------------
    def _handler(self):
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stall

            def log_message(self, *args):
                pass

            def _reply(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the process was stopped while it waited

            def do_GET(self):
                if self.path != f"{API}/invocation/next":
                    return self._reply(404)
                if runtime.first_next_at is None:
                    runtime.first_next_at = time.monotonic()
                request_id, event = runtime.events.get()
                if request_id is None:  # stopping
                    return self._reply(410)
                deadline = int((time.time() + runtime.timeout) * 1000)
                self._reply(200, json.dumps(event).encode(), {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn":
                        f"arn:aws:lambda:us-east-1:123456789012:function:{runtime.name}",
                    "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}",
                })

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path[len(API):].strip("/").split("/")
                if parts == ["init", "error"]:
                    runtime.init_error = body.decode(errors="replace")
                    with runtime.cond:
                        runtime.cond.notify_all()
                    return self._reply(202)
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    with runtime.cond:
                        runtime.results[parts[1]] = (parts[2], body)
                        runtime.cond.notify_all()
                    return self._reply(202)
                self._reply(404)

        return Handler

    def start(self):
        self.server = QuietThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "AWS_REGION": "us-east-1",
            "_HANDLER": "bootstrap",
            **self.env,
        }
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(self.command, env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout=30.0):
        """Waits for the end of init (the first GET /next); returns the init time in ms."""
        deadline = time.monotonic() + timeout
        while self.first_next_at is None:
            if self.proc.poll() is not None or self.init_error:
                raise FunctionError(f"init failed: {self.init_error or self.proc.returncode}")
            if time.monotonic() > deadline:
                raise FunctionError("init timed out")
            time.sleep(0.0005)
        return (self.first_next_at - self.spawned_at) * 1000

    def cpu_seconds(self):
        """User + system CPU time the process has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def invoke(self, event, timeout=None):
        request_id = str(uuid.uuid4())
        self.events.put((request_id, event))
        deadline = time.monotonic() + (timeout or self.timeout)
        with self.cond:
            while request_id not in self.results:
                if self.init_error:
                    raise FunctionError(f"init failed: {self.init_error}")
                if self.proc.poll() is not None:
                    raise FunctionError(f"the function exited with {self.proc.returncode}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FunctionError("timed out")
                self.cond.wait(min(left, 0.2))
            kind, body = self.results.pop(request_id)
        if kind == "error":
            raise FunctionError(body.decode(errors="replace"))
        return json.loads(body)

    def kill(self):
        """Kills the process at once, as Lambda does at a timeout or crash."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.events.put((None, None))
        if self.server:
            self.server.shutdown()


def status_of(response):
    """(status code, parsed JSON body) of an API Gateway response from the function."""
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        import base64
        body = base64.b64decode(body).decode()
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = body
    return response.get("statusCode"), parsed

