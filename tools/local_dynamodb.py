#!/usr/bin/env python3
"""A local DynamoDB-API server for the tests and `make run`: moto's server on 127.0.0.1.

What it adds to moto:
  * Requests are served one at a time. moto checks a ConditionExpression and then writes with no
    lock, so two concurrent conditional writes could both succeed; real DynamoDB makes each
    single-item write atomic. Serializing restores that, so a race the tests find is ours.
  * HTTP/1.1 connections are kept open between requests, as DynamoDB keeps them.
  * GET  /_local/stats         counts of requests by operation (X-Amz-Target); POST resets them.
  * POST /_local/faults        {"count": N, "kind": "throttle" | "unavailable", "table": T}:
                               the next N DynamoDB requests on table T (any table if T is
                               omitted) fail that way, for fault-injection tests.
  * --exit-with-parent         exits when its stdin closes, so a test process that dies never
                               leaves a server behind.
  * IAM, when enforced (POST /moto-api/reset-auth, see tools/iam_check.py): moto 5.2 authorizes
    every DynamoDB request against the resource "*", so a policy scoped to a table would be
    refused. Here a request is authorized against the ARN it acts on, as DynamoDB does: the
    table's, or its index's for a Query or Scan with an IndexName. (moto still evaluates no
    Condition, no NotResource, and no per-item actions of Batch*/Transact* requests.)

Tables are created as template.yaml creates DeploymentsTable: pk/sk, TTL on expires_at, and the
global secondary index `due` (due_pk S, due_at N, projection ALL).

Usage: local_dynamodb.py [--port N] [--table NAME ...] [--exit-with-parent]
Prints "PORT <n>" on stdout once it accepts requests (after creating the tables).
"""
import argparse
import io
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback_server import QuietThreadingHTTPServer  # noqa: E402

for key, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
    os.environ.setdefault(key, value)


def authorize_against_the_real_arn():
    """Makes moto's DynamoDB handler name the table (or index) ARN a request acts on."""
    from moto.dynamodb.responses import DynamoHandler

    def determine_resource(self):
        try:
            body = json.loads(self.body) if isinstance(self.body, (str, bytes)) else dict(self.body or {})
        except ValueError:
            return "*"
        table = body.get("TableName")
        if not table:
            return "*"
        arn = f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"
        if body.get("IndexName"):
            arn += f"/index/{body['IndexName']}"
        return arn

    DynamoHandler._determine_resource = determine_resource


def make_app():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    authorize_against_the_real_arn()

    moto_app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    stats = {}
    faults = {"count": 0, "kind": "unavailable", "table": None}

    def reply(start_response, status, payload, content_type="application/json"):
        body = json.dumps(payload).encode()
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        if path == "/_local/stats":
            with lock:
                snapshot = dict(stats)
                if method == "POST":
                    stats.clear()
            return reply(start_response, "200 OK", snapshot)
        if path == "/_local/faults" and method == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with lock:
                faults["count"] = int(spec.get("count", 0))
                faults["kind"] = spec.get("kind", "unavailable")
                faults["table"] = spec.get("table")
            return reply(start_response, "200 OK", faults)

        target = environ.get("HTTP_X_AMZ_TARGET", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        with lock:
            op = target.rsplit(".", 1)[-1] if target else ""
            if op:
                stats[op] = stats.get(op, 0) + 1
            if op and faults["count"] > 0 and (faults["table"] is None or table_of(raw) == faults["table"]):
                faults["count"] -= 1
                if faults["kind"] == "throttle":
                    return reply(start_response, "400 Bad Request", {
                        "__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                        "message": "Rate of requests exceeds the allowed throughput."},
                        "application/x-amz-json-1.0")
                return reply(start_response, "503 Service Unavailable", {
                    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                    "message": "injected fault"}, "application/x-amz-json-1.0")
            status, headers, body = call_wsgi(moto_app, environ)
        start_response(status, headers)
        return [body]

    return app


def call_wsgi(app, environ):
    """Runs the WSGI `app` on `environ` to the end: (status line, headers, whole body)."""
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return answer["status"], answer["headers"], body


def keep_alive_handler(app):
    """An HTTP/1.1 handler that serves the WSGI `app` and keeps the connection open, as DynamoDB
    does (werkzeug's development server closes it after every answer, so each request would pay
    a new TCP connection, and over TLS a new handshake, that production does not)."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.serve()

        do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

        def serve(self):
            path, _, query = self.path.partition("?")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            environ = {
                "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(self.server.server_address[1]),
                "SERVER_PROTOCOL": self.request_version, "REMOTE_ADDR": self.client_address[0],
                "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
                "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
                "wsgi.run_once": False,
            }
            for name, value in self.headers.items():
                key = "HTTP_" + name.upper().replace("-", "_")
                if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                    environ[key] = value
            status, headers, out = call_wsgi(app, environ)
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            for name, value in headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

    return Handler


def table_of(raw):
    try:
        return json.loads(raw or b"{}").get("TableName")
    except ValueError:
        return None


def create_table(endpoint, name):
    import boto3
    client = boto3.client("dynamodb", endpoint_url=endpoint)
    try:
        # The same keys and index as template.yaml's DeploymentsTable.
        client.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"},
                                  {"AttributeName": "due_pk", "AttributeType": "S"},
                                  {"AttributeName": "due_at", "AttributeType": "N"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                       {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "due",
                "KeySchema": [{"AttributeName": "due_pk", "KeyType": "HASH"},
                              {"AttributeName": "due_at", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"}}])
        client.update_time_to_live(TableName=name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "expires_at"})
    except client.exceptions.ResourceInUseException:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--table", action="append", default=[])
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args()

    server = QuietThreadingHTTPServer(("127.0.0.1", args.port), keep_alive_handler(make_app()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    for table in args.table:
        create_table(endpoint, table)
    print(f"PORT {server.server_port}", flush=True)
    if args.exit_with_parent:
        sys.stdin.read()
        os._exit(0)
    threading.Event().wait()


if __name__ == "__main__":
    main()
