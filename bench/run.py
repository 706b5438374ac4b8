"""The performance harness: every figure in one run, so that ratios hold on a noisy machine.

    .venv/bin/python bench/run.py [--duration 10] [--soak 100000] [--quick]

1. In-process latency (p50 / p99) of `Evaluator.evaluate` for small (<=5), typical (20) and large
   (60) encounters on the real rule set, and how it grows with the number of rules: synthetic
   rule sets of 1x, 2x and 4x the real one (every rule copied under a new id).
2. HTTP under real gunicorn with the deploy config: wrk at 16 and 64 connections against
   `POST /v1/evaluations` (the clinical cases in rotation, ages varied, so that no cache can
   stand in for evaluation) and, in the same run, against `GET /healthz/live`. The headline is
   the ratio of evaluation to health throughput.
3. Start-up time to ready, and RSS per worker before and after a soak of `--soak` evaluations.

It prints a table and writes JSON to bench/results/run-<timestamp>.json. wrk comes from
Debian (`apt-get install wrk`); the script installs it when it can (root) and says so if not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import latency  # noqa: E402  (bench/latency.py: encounter building and timing helpers)
import yaml  # noqa: E402

from service.config import DEFAULT_RULES_DIR  # noqa: E402
from service.evaluation import Evaluator  # noqa: E402
from service.loader import load_knowledge  # noqa: E402

SIZES = {"small": None, "typical": 20, "large": 60}
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service:create_app()"]


# --- 1. in process -----------------------------------------------------------------------------


def in_process(rules_dir: Path, n: int, sizes: dict[str, int | None]) -> dict[str, Any]:
    k = load_knowledge(rules_dir)
    evaluator = Evaluator(k)
    inputs = {
        name: latency.build_inputs(k, n, offset=10_000 * i, target=t) for i, (name, t) in enumerate(sizes.items())
    }
    warm = latency.build_inputs(k, 200, offset=90_000, target=20)
    for enc in warm[1]:
        evaluator.evaluate(enc)
    fns = {name: (lambda raw, enc: evaluator.evaluate(enc)) for name in sizes}
    timings = latency.time_interleaved(fns, inputs)
    return {
        "rules": len(k.rules),
        "groups": {
            name: {"findings_mean": sum(len(e.findings) for e in inputs[name][1]) / n, **latency.stats(timings[name])}
            for name in sizes
        },
    }


def scaled_rules(factor: int, target: Path) -> Path:
    """The real rule set with every rule copied `factor - 1` more times under new ids."""
    shutil.copytree(DEFAULT_RULES_DIR, target)
    if factor > 1:
        for path in sorted((target / "domains").glob("*.yaml")):
            doc = yaml.safe_load(path.read_text())
            copies = [
                {**rule, "id": f"{rule['id']}.x{c}"} for c in range(2, factor + 1) for rule in doc["rules"]
            ]
            doc["rules"] = doc["rules"] + copies
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


# --- 2. HTTP ---------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed for the HTTP figures: apt-get install wrk")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int | None, **extra: str) -> tuple[subprocess.Popen[bytes], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update({"CDS_BIND": f"127.0.0.1:{port}", "CDS_ACCESS_LOG": "/dev/null", **extra})
    if workers:
        env["CDS_WORKERS"] = str(workers)
    t0 = time.monotonic()
    proc = subprocess.Popen(GUNICORN, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("gunicorn did not become ready in 60 s")


def worker_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return sorted(int(p) for p in children)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def lua_script(bodies: list[bytes], directory: Path) -> Path:
    """wrk posts the bodies in rotation; each wrk thread starts at a different offset."""
    quoted = ",\n".join("[==[" + b.decode() + "]==]" for b in bodies)
    script = directory / "evaluations.lua"
    script.write_text(
        "local bodies = {\n" + quoted + "\n}\n"
        "local i = math.random(#bodies)\n"
        "local headers = {['Content-Type'] = 'application/json'}\n"
        "request = function()\n"
        "  i = (i % #bodies) + 1\n"
        "  return wrk.format('POST', '/v1/evaluations', headers, bodies[i])\n"
        "end\n"
    )
    return script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk(binary: str, url: str, connections: int, seconds: int, script: Path | None) -> dict[str, Any]:
    cmd = [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "connections": connections,
        "seconds": seconds,
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(pct.get("50", "nan")),
        "p99_ms": _ms(pct.get("99", "nan")),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def http(duration: int, soak: int, workers: int | None) -> dict[str, Any]:
    binary = ensure_wrk()
    k = load_knowledge(DEFAULT_RULES_DIR)
    bodies, _ = latency.build_inputs(k, 2000, offset=50_000, target=20)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, startup = start_server(port, workers)
    result: dict[str, Any] = {"startup_to_ready_s": round(startup, 3)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = lua_script(bodies, Path(tmp))
            wrk(binary, base + "/healthz/live", 16, 2, None)  # warm up both paths
            wrk(binary, base + "/v1/evaluations", 16, 2, script)
            pids = worker_pids(proc.pid)
            result["workers"] = len(pids)
            rss_before = {pid: rss_kib(pid) for pid in pids}
            runs = []
            for connections in (16, 64):
                health = wrk(binary, base + "/healthz/live", connections, duration, None)
                evals = wrk(binary, base + "/v1/evaluations", connections, duration, script)
                runs.append({
                    "connections": connections, "health": health, "evaluations": evals,
                    "ratio_eval_to_health": round(evals["rps"] / health["rps"], 3) if health["rps"] else None,
                })
            result["runs"] = runs
            if soak:
                rps = max(r["evaluations"]["rps"] for r in runs) or 100.0
                sent = 0
                soak_runs = []
                while sent < soak:  # wrk runs for a time: repeat until the count is reached
                    seconds = max(2, int((soak - sent) / rps) + 1)
                    run = wrk(binary, base + "/v1/evaluations", 16, seconds, script)
                    soak_runs.append(run)
                    sent += run["requests"]
                rss_after = {pid: rss_kib(pid) for pid in worker_pids(proc.pid)}
                result["soak"] = {
                    "evaluations": sent,
                    "non_2xx": sum(r["non_2xx"] for r in soak_runs),
                    "socket_errors": sum(r["socket_errors"] for r in soak_runs),
                    "rss_kib": {
                        str(pid): {"before": rss_before.get(pid), "after": rss_after.get(pid),
                                   "growth_pct": round(100 * (rss_after[pid] - rss_before[pid]) / rss_before[pid], 2)
                                   if pid in rss_before and pid in rss_after else None}
                        for pid in sorted(set(rss_before) | set(rss_after))
                    },
                }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


# --- report ------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    ip = report["in_process"]
    print(f"\nIn-process evaluate (rule set {report['ruleset']['version']}, {ip['rules']} rules), ms:")
    print(f"{'encounter':<10} {'findings':>8} {'p50':>8} {'p99':>8}")
    for name, g in ip["groups"].items():
        print(f"{name:<10} {g['findings_mean']:>8.1f} {g['p50_ms']:>8.3f} {g['p99_ms']:>8.3f}")
    print("\nGrowth with rule count (typical encounter), ms:")
    for row in report["scaling"]:
        print(f"  {row['factor']}x  {row['rules']:>4} rules  p50 {row['p50_ms']:.3f}  p99 {row['p99_ms']:.3f}")
    h = report.get("http")
    if h:
        print(f"\nHTTP under gunicorn ({h['workers']} workers), wrk -t2, "
              f"start-up to ready {h['startup_to_ready_s']} s:")
        print(f"{'conns':>5} {'endpoint':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8}")
        for run in h["runs"]:
            for name in ("health", "evaluations"):
                r = run[name]
                print(f"{run['connections']:>5} {name:<16} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                      f"{r['non_2xx']:>8} {r['socket_errors']:>8}")
            print(f"{'':>5} ratio evaluations / health: {run['ratio_eval_to_health']}")
        if "soak" in h:
            s = h["soak"]
            print(f"\nSoak: {s['evaluations']} evaluations, non-2xx {s['non_2xx']}, socket errors {s['socket_errors']}")
            for pid, m in s["rss_kib"].items():
                print(f"  worker {pid}: RSS {m['before']} -> {m['after']} KiB ({m['growth_pct']}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="in-process evaluations per group (default 2000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--soak", type=int, default=100_000, help="evaluations in the memory soak (0: none)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the deploy config's)")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--out", help="JSON output (default bench/results/run-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.duration, args.soak = 300, 3, 2000

    k = load_knowledge(DEFAULT_RULES_DIR)
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": latency.machine_info(),
        "ruleset": {"name": k.name, "version": k.version, "sha256": k.sha256, "rules": len(k.rules)},
        "in_process": in_process(DEFAULT_RULES_DIR, args.n, SIZES),
        "scaling": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 2, 4):
            rules = scaled_rules(factor, Path(tmp) / f"x{factor}")
            r = in_process(rules, args.n, {"typical": 20})
            report["scaling"].append({"factor": factor, "rules": r["rules"], **{
                key: r["groups"]["typical"][key] for key in ("p50_ms", "p99_ms")}})
    if not args.no_http:
        report["http"] = http(args.duration, args.soak, args.workers)
    print_report(report)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"run-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
