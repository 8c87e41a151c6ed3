#!/usr/bin/env python3
"""`make bench`: cold start, warm cost, memory, DynamoDB/GitHub calls and artifact size of
deploy-webhook, side by side with a hello-world lambda_runtime function (the floor) and, where
this machine has it, the Python + Powertools peer in ../shared/bench/peer_python.

Every function runs as Lambda runs it: a fresh process under a local Lambda Runtime API
(tools/lambda_local.py), with a local DynamoDB (moto, requests serialized) and the GitHub stand-in
on loopback. Prints a Markdown report and writes it to docs/BENCHMARKS.md.

Environment: BENCH_SPAWNS (cold starts per function, default 21), BENCH_WARM (warm deliveries per
type, default 200).
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import events  # noqa: E402
from github_standin import GitHubStandIn  # noqa: E402
from lambda_local import LocalLambda, status_of  # noqa: E402

SPAWNS = int(os.environ.get("BENCH_SPAWNS", "21"))
WARM = int(os.environ.get("BENCH_WARM", "200"))
SECRET = "bench-secret"
TABLE = "deploy-webhook-bench"
PEER_DIR = ROOT.parent / "shared" / "bench" / "peer_python"

# On-demand prices, us-east-1 (2025): DynamoDB $0.625 per million write request units and $0.125 per
# million read request units; Lambda arm64 $0.0000133334 per GB-second and $0.20 per million
# requests; HTTP API $1.00 per million requests.
PRICE_WRU, PRICE_RRU = 0.625e-6, 0.125e-6
PRICE_GB_S, PRICE_REQ, PRICE_API = 0.0000133334, 0.20e-6, 1.00e-6
MEMORY_MB = 256


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, cwd=ROOT, **kw)


def start_dynamodb():
    proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/local_dynamodb.py"),
                             "--table", TABLE, "--exit-with-parent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode()
    return proc, f"http://127.0.0.1:{line.split()[1]}"


def ddb_stats(endpoint, reset=False):
    req = urllib.request.Request(endpoint + "/_local/stats", method="POST" if reset else "GET")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


class Subject:
    def __init__(self, name, command, full=True):
        self.name, self.command, self.full = name, command, full


def merged_pr_event(number):
    payload = events.load_payload("pull_request.merged")
    payload["number"] = number
    payload["pull_request"]["number"] = number
    payload["pull_request"]["merge_commit_sha"] = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    return events.api_gateway_event("pull_request", payload, str(uuid.uuid4()), SECRET)


def deployment_event(github, deployment_id):
    dep = github.deployments[deployment_id]
    payload = events.load_payload("deployment.created")
    payload["deployment"].update(id=deployment_id, sha=dep["sha"], ref=dep["ref"], environment="production")
    return events.api_gateway_event("deployment", payload, str(uuid.uuid4()), SECRET)


def ignored_event():
    return events.api_gateway_event("issues", events.load_payload("issues.opened"), str(uuid.uuid4()), SECRET)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_subject(subject, env, github, endpoint, pr_numbers):
    result = {"init": [], "first": []}
    for _ in range(SPAWNS):
        fn = LambdaFor(subject, env)
        try:
            result["init"].append(fn.wait_ready())
            event = merged_pr_event(next(pr_numbers)) if subject.full else ignored_event()
            fn.invoke(event)
            result["first"].append((time.monotonic() - fn.spawned_at) * 1000)
        finally:
            fn.stop()
    if not subject.full:
        return result
    fn = LambdaFor(subject, env)
    fn.wait_ready()
    try:
        for kind in ("merged_pr", "deployment", "ignored"):
            # Deployments to run: made first, so that their creation is not counted.
            deployment_ids = []
            if kind == "deployment":
                for _ in range(WARM):
                    code, _ = status_of(fn.invoke(merged_pr_event(next(pr_numbers))))
                    assert 200 <= code < 300, f"{subject.name}: merged PR answered {code}"
                    deployment_ids.append(max(github.deployments))  # ids only grow
            for _ in range(10):  # warm up
                fn.invoke(ignored_event())
            ddb_stats(endpoint, reset=True)
            calls_before = len(github.calls)
            cpu_before = fn.cpu_seconds()
            latencies = []
            for i in range(WARM):
                event = (merged_pr_event(next(pr_numbers)) if kind == "merged_pr"
                         else deployment_event(github, deployment_ids[i]) if kind == "deployment" else ignored_event())
                t0 = time.perf_counter()
                code, _ = status_of(fn.invoke(event))
                latencies.append((time.perf_counter() - t0) * 1000)
                assert 200 <= code < 300, f"{subject.name} {kind}: {code}"
            cpu = (fn.cpu_seconds() - cpu_before) / WARM * 1000
            stats = ddb_stats(endpoint)
            result[kind] = {
                "p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "cpu_ms": cpu,
                "ddb": {op: n / WARM for op, n in sorted(stats.items())},
                "github": (len(github.calls) - calls_before) / WARM,
            }
        result["rss"] = fn.peak_rss_mb()
    finally:
        fn.stop()
    return result


def LambdaFor(subject, env):
    return LocalLambda(subject.command, env=env, log=subprocess.DEVNULL).start()


def criterion():
    out = subprocess.run("cargo bench --locked --bench webhook -- --output-format bencher", shell=True, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        # test verify_decode_parse/5KB ... bench:       12345 ns/iter (+/- 67)
        if line.startswith("test ") and "bench:" in line:
            name = line.split()[1].split("/")[-1]
            ns = float(line.split("bench:")[1].split("ns/iter")[0].replace(",", "").strip())
            rows[name] = ns
    return rows


def main():
    started = time.monotonic()
    print("building: release binary, floor, arm64 zip ...", flush=True)
    sh("cargo build --release --locked --quiet")
    sh("cargo build --release --quiet --manifest-path bench/floor/Cargo.toml --target-dir target/floor")
    sh("make --no-print-directory build > /dev/null")
    zip_size = (ROOT / "target/lambda/deploy-webhook/bootstrap.zip").stat().st_size
    subjects = [Subject("deploy-webhook", [str(ROOT / "target/release/deploy-webhook")]),
                Subject("floor (hello world)", [str(ROOT / "target/floor/release/floor")], full=False)]
    peer_note = ""
    if (PEER_DIR / "bootstrap").exists():
        try:
            sh(f"bash {PEER_DIR.parent / 'setup.sh'} --no-floor > /dev/null 2>&1")
            subjects.append(Subject("python peer (Powertools)", [str(PEER_DIR / "bootstrap")]))
        except subprocess.CalledProcessError:
            peer_note = "The Python peer could not be installed on this machine; it was left out."
    else:
        peer_note = "The Python peer (../shared/bench/peer_python) is not on this machine; it was left out."

    ddb, endpoint = start_dynamodb()
    github = GitHubStandIn().start()
    env = {"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_TOKEN": "ghp_bench", "GITHUB_API_URL": github.url,
           "DEPLOYMENTS_TABLE": TABLE, "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
           "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY_MB), "AWS_LAMBDA_LOG_LEVEL": "WARN"}
    pr_numbers = iter(range(1000, 10**9))
    results = {}
    try:
        for subject in subjects:
            print(f"measuring {subject.name} ...", flush=True)
            results[subject.name] = run_subject(subject, env, github, endpoint, pr_numbers)
    finally:
        github.stop()
        ddb.terminate()
    print("criterion: verify + decode + parse ...", flush=True)
    throughput = criterion()
    report = render(results, throughput, zip_size, peer_note, time.monotonic() - started)
    print(report)
    (ROOT / "docs" / "BENCHMARKS.md").write_text(report)


def render(results, throughput, zip_size, peer_note, elapsed):
    ours = results["deploy-webhook"]
    floor = results["floor (hello world)"]
    peer = results.get("python peer (Powertools)")
    med = statistics.median
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (tools/bench.py); do not edit by hand. Ratios from one run are what count:",
        "the machine is shared and noisy, absolute figures are context.",
        "",
        f"Machine: {cpu_model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{SPAWNS} cold starts and {WARM} warm deliveries per type; run took {elapsed:.0f} s.",
        "Each function is a fresh process under a local Lambda Runtime API; DynamoDB is moto on loopback",
        "(requests serialized), GitHub is the loopback stand-in, so latencies are dominated by moto.",
        "",
        "## Cold start (median)",
        "",
        "| function | init: spawn → first `/next` | spawn → end of first delivery |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {med(r['init']):.1f} ms | {med(r['first']):.1f} ms |")
    lines += ["", f"Init ratio deploy-webhook / floor: **{med(ours['init']) / med(floor['init']):.2f}×** (target ≤ 1.5×)."]
    if peer:
        lines.append(f"Init ratio deploy-webhook / Python peer: {med(ours['init']) / med(peer['init']):.2f}×.")
    lines += ["", "The floor's first delivery is a fixed answer; the others' is a merged PR (2 DynamoDB round trips"
              " before GitHub, GitHub, 2 after).", "", "## Warm deliveries", "",
              "| function | delivery | p50 | p99 | CPU per delivery | DynamoDB requests per delivery | GitHub calls |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for kind in ("merged_pr", "deployment", "ignored"):
            if kind in r:
                k = r[kind]
                ddb = ", ".join(f"{op} {n:g}" for op, n in k["ddb"].items()) or "none"
                lines.append(f"| {name} | {kind} | {k['p50']:.1f} ms | {k['p99']:.1f} ms | {k['cpu_ms']:.2f} ms | "
                             f"{ddb} | {k['github']:g} |")
    lines += ["", "## Memory", "", "| function | peak RSS |", "|---|---|"]
    for name, r in results.items():
        if "rss" in r:
            lines.append(f"| {name} | {r['rss']:.1f} MB |")
    if peer:
        cpu_ratio = statistics.mean(ours[k]["cpu_ms"] / peer[k]["cpu_ms"] for k in ("merged_pr", "deployment"))
        lines += ["", f"CPU per warm delivery, deploy-webhook / Python peer (merged PR and deployment, mean of the "
                      f"two ratios): **{cpu_ratio:.3f}** (target ≤ 0.1).",
                  f"Peak RSS deploy-webhook / Python peer: **{ours['rss'] / peer['rss']:.2f}** (target ≤ 0.33, "
                  f"and under 32 MB)."]
    if peer_note:
        lines += ["", peer_note]
    lines += ["", "## Verify + decode + parse (criterion, one core)", "", "| payload | time | throughput |",
              "|---|---|---|"]
    sizes = {"5KB": 5 * 1024, "100KB": 100 * 1024, "5MB": 5 * 1024 * 1024}
    for name, ns in throughput.items():
        mbps = sizes.get(name, 0) / (ns / 1e9) / 1e6 if ns else 0
        lines.append(f"| {name} | {ns / 1000:.1f} µs | {mbps:.0f} MB/s |")
    lines += ["", "## Cost model (on-demand, us-east-1, 256 MB arm64)", "",
              "Per 100 000 deliveries of one type: DynamoDB request units from the counters above (every"
              " item is under 1 KB: one unit per request), Lambda billed duration = the warm p50 (an upper"
              " bound here: moto is slower than DynamoDB), plus API Gateway HTTP API requests.", "",
              "| delivery | DynamoDB writes | reads | GitHub calls | DynamoDB $ | Lambda $ | API Gateway $ | total $ |",
              "|---|---|---|---|---|---|---|---|"]
    for kind in ("merged_pr", "deployment", "ignored"):
        k = ours[kind]
        writes = sum(n for op, n in k["ddb"].items() if op in ("UpdateItem", "PutItem", "DeleteItem"))
        reads = sum(n for op, n in k["ddb"].items() if op in ("GetItem", "Query", "Scan"))
        ddb_cost = 1e5 * (writes * PRICE_WRU + reads * PRICE_RRU)
        lambda_cost = 1e5 * (k["p50"] / 1000 * MEMORY_MB / 1024 * PRICE_GB_S + PRICE_REQ)
        api_cost = 1e5 * PRICE_API
        lines.append(f"| {kind} | {writes:g} | {reads:g} | {k['github']:g} | {ddb_cost:.3f} | {lambda_cost:.3f} | "
                     f"{api_cost:.3f} | {ddb_cost + lambda_cost + api_cost:.3f} |")
    lines += ["", "## Artifact", "",
              f"`cargo lambda build --release --arm64`: bootstrap.zip is **{zip_size / 1048576:.2f} MB** "
              f"({zip_size} bytes; target ≤ 5 MB).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
