"""The performance harness: every figure in one run, so that ratios hold on a noisy machine.

    .venv/bin/python bench/run.py [--duration 10] [--soak 100000] [--engine-soak 100000]
                                  [--configs nginx-sync,nginx-gthread,gthread,sync] [--quick]

1. In-process latency (p50 / p99, ms) for small (<=5), typical (20) and large (60) encounters on
   the real rule set, timed interleaved: `engine` (the adapter), `engine-before` (the adapter as
   it was: a fresh durable-rules session per evaluation, tests/reference/engine_fresh_session.py),
   `no-ask-next` (engine + the answer, ask_next left empty), `evaluate` (the whole answer) and
   `request` (parse + validate + evaluate + serialise, what a request costs minus HTTP).
2. Growth with the number of rules: synthetic rule sets of 1x, 2x and 4x the real one (every
   rule copied under a new id), typical encounter, with each factor's ratio to 1x.
3. Engine soak: `--engine-soak` evaluations through one engine state, RSS before and after.
4. HTTP under real gunicorn with the deploy config, for each worker set-up of `--configs`
   (`sync` / `gthread` straight at gunicorn; `nginx-sync` / `nginx-gthread` through the nginx
   sidecar of deploy/nginx/nginx.conf): wrk at 16 and 64 connections against
   `GET /healthz/live`, `POST /v1/evaluations` (the clinical cases in rotation, ages varied, so
   that no cache can stand in for evaluation) and `POST /bench/precomputed` (bench/ceiling_app.py:
   the body read and parsed, then a precomputed answer of the same size: the ceiling HTTP leaves
   to evaluation). The headline is the ratio of evaluation to health throughput, measured
   back to back in the same server.
5. On the first config: start-up to ready, and RSS per worker before and after an HTTP soak of
   `--soak` evaluations.

It prints a table and writes JSON to bench/results/run-<timestamp>.json. wrk comes from
Debian (`apt-get install wrk`), nginx too (scripts/setup-system.sh); the script installs wrk
when it can (root) and says so if not.
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

import latency  # noqa: E402
import orjson  # noqa: E402  (bench/latency.py: encounter building and timing helpers)
import yaml  # noqa: E402

from service.config import DEFAULT_RULES_DIR  # noqa: E402
from service.engine import Engine  # noqa: E402
from service.evaluation import Evaluator  # noqa: E402
from service.intake import parse_encounter  # noqa: E402
from service.loader import load_knowledge  # noqa: E402
from tests.reference import engine_fresh_session  # noqa: E402  (the adapter before issue 18)

SIZES = {"small": None, "typical": 20, "large": 60}
MODES = ("engine", "engine-before", "no-ask-next", "evaluate", "request")
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "bench.ceiling_app:create()"]
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
CONFIGS = ("nginx-sync", "nginx-gthread", "gthread", "sync")


# --- 1. in process -----------------------------------------------------------------------------


class _NoAskNext:
    """The evaluator's ranker with ask_next left empty: what the answer costs without it."""

    def __init__(self, ranker: Any) -> None:
        self._ranker = ranker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ranker, name)

    def rank(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def modes(k: Any, which: tuple[str, ...]) -> dict[str, Any]:
    evaluator = Evaluator(k)
    bare = Evaluator(k, engine=evaluator.engine)
    bare.ranker = _NoAskNext(bare.ranker)  # type: ignore[assignment]
    before = engine_fresh_session.Engine(k)
    fns = {
        "engine": lambda raw, enc: evaluator.engine.evaluate(enc.facts()),
        "engine-before": lambda raw, enc: before.evaluate(enc.facts()),
        "no-ask-next": lambda raw, enc: bare.evaluate(enc),
        "evaluate": lambda raw, enc: evaluator.evaluate(enc),
        "request": lambda raw, enc: orjson.dumps(evaluator.evaluate(parse_encounter(k, orjson.loads(raw)))),
    }
    return {m: fns[m] for m in which}


def in_process(rules_dir: Path, n: int, sizes: dict[str, int | None], which: tuple[str, ...] = MODES) -> dict[str, Any]:
    k = load_knowledge(rules_dir)
    fns = modes(k, which)
    warm = latency.build_inputs(k, 200, offset=90_000, target=20)
    for raw, enc in zip(*warm, strict=True):
        for fn in fns.values():
            fn(raw, enc)
    groups: dict[str, Any] = {}
    for i, (name, target) in enumerate(sizes.items()):
        raws, encs = latency.build_inputs(k, n, offset=10_000 * i, target=target)
        timings = latency.time_interleaved(fns, {m: (raws, encs) for m in fns})
        groups[name] = {
            "findings_mean": sum(len(e.findings) for e in encs) / n,
            **{m: latency.stats(timings[m]) for m in fns},
        }
    return {"rules": len(k.rules), "groups": groups}


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


def engine_soak(count: int) -> dict[str, Any]:
    """`count` evaluations through one engine state (the encounters of every size, ages varied):
    RSS of this process after a warm-up and at the end."""
    k = load_knowledge(DEFAULT_RULES_DIR)
    engine = Engine(k)
    facts = [e.facts() for t in (None, 20, 60) for e in latency.build_inputs(k, 2000, offset=70_000, target=t)[1]]
    for f in facts:
        engine.evaluate(f)
    before = rss_kib(os.getpid())
    t0 = time.monotonic()
    for i in range(count):
        engine.evaluate(facts[i % len(facts)])
    after = rss_kib(os.getpid())
    return {"evaluations": count, "seconds": round(time.monotonic() - t0, 1), "rss_kib_before": before,
            "rss_kib_after": after, "growth_pct": round(100 * (after - before) / before, 2),
            "live_states": engine.live_sessions}


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


def lua_script(bodies: list[bytes], directory: Path, path: str) -> Path:
    """wrk posts the bodies in rotation; each wrk thread starts at a different offset."""
    quoted = ",\n".join("[==[" + b.decode() + "]==]" for b in bodies)
    script = directory / f"post{path.replace('/', '-')}.lua"
    script.write_text(
        "local bodies = {\n" + quoted + "\n}\n"
        "local i = math.random(#bodies)\n"
        "local headers = {['Content-Type'] = 'application/json'}\n"
        "request = function()\n"
        "  i = (i % #bodies) + 1\n"
        f"  return wrk.format('POST', '{path}', headers, bodies[i])\n"
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


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def start_nginx(binary: str, tmp: Path, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    """The sidecar's own file (deploy/nginx/nginx.conf) on free loopback ports, as the tests run it."""
    port = free_port()
    text = (NGINX_CONF.read_text().replace("listen 8080;", f"listen 127.0.0.1:{port};")
            .replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};").replace("/tmp/nginx", str(tmp)))
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    extra = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    proc = subprocess.Popen([binary, "-p", str(tmp), "-c", str(conf), "-e", "stderr", "-g", extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/proxy", timeout=2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nginx did not start")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def http_config(config: str, duration: int, soak: int, workers: int | None, bodies: list[bytes]) -> dict[str, Any]:
    """One worker set-up: health, evaluations and the precomputed ceiling at 16 and 64
    connections, back to back in the same server."""
    binary = ensure_wrk()
    proxied = config.startswith("nginx-")
    worker_class = config.removeprefix("nginx-")
    port = free_port()
    proc, startup = start_server(port, workers, CDS_WORKER_CLASS=worker_class)
    result: dict[str, Any] = {"config": config, "worker_class": worker_class, "nginx": proxied,
                              "startup_to_ready_s": round(startup, 3)}
    nginx: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if proxied:
                found = nginx_binary()
                if found is None:
                    return {**result, "skipped": "nginx is not installed (scripts/setup-system.sh)"}
                nginx, front = start_nginx(found, Path(tmp), port)
            else:
                front = port
            base = f"http://127.0.0.1:{front}"
            script = lua_script(bodies, Path(tmp), "/v1/evaluations")
            ceiling = lua_script(bodies, Path(tmp), "/bench/precomputed")
            wrk(binary, base + "/healthz/live", 16, 2, None)  # warm up every path
            wrk(binary, base + "/v1/evaluations", 16, 2, script)
            wrk(binary, base + "/bench/precomputed", 16, 2, ceiling)
            pids = worker_pids(proc.pid)
            result["workers"] = len(pids)
            rss_before = {pid: rss_kib(pid) for pid in pids}
            runs = []
            for connections in (16, 64):
                health = wrk(binary, base + "/healthz/live", connections, duration, None)
                evals = wrk(binary, base + "/v1/evaluations", connections, duration, script)
                pre = wrk(binary, base + "/bench/precomputed", connections, duration, ceiling)
                runs.append({
                    "connections": connections, "health": health, "evaluations": evals, "precomputed": pre,
                    "ratio_eval_to_health": round(evals["rps"] / health["rps"], 3) if health["rps"] else None,
                    "ratio_precomputed_to_health": round(pre["rps"] / health["rps"], 3) if health["rps"] else None,
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
        if nginx is not None:
            stop(nginx, signal.SIGQUIT)
        stop(proc)
    return result


def http(configs: list[str], duration: int, soak: int, workers: int | None) -> list[dict[str, Any]]:
    k = load_knowledge(DEFAULT_RULES_DIR)
    bodies, _ = latency.build_inputs(k, 2000, offset=50_000, target=20)
    return [http_config(c, duration, soak if i == 0 else 0, workers, bodies) for i, c in enumerate(configs)]


# --- report ------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b else "-"


def print_report(report: dict[str, Any]) -> None:
    ip = report["in_process"]
    print(f"\nIn-process (rule set {report['ruleset']['version']}, {ip['rules']} rules), p50 / p99 ms:")
    print(f"{'encounter':<10} {'findings':>8} " + " ".join(f"{m:>17}" for m in MODES))
    for name, g in ip["groups"].items():
        cells = " ".join(f"{g[m]['p50_ms']:>8.3f}/{g[m]['p99_ms']:<8.3f}" for m in MODES)
        print(f"{name:<10} {g['findings_mean']:>8.1f} {cells}")
    print("\nGrowth with rule count (typical encounter), p50 / p99 ms and ratio of p50 to 1x:")
    base = report["scaling"][0]
    for row in report["scaling"]:
        cells = "  ".join(
            f"{m} {row[m]['p50_ms']:.3f}/{row[m]['p99_ms']:.3f} ({_ratio(row[m]['p50_ms'], base[m]['p50_ms'])})"
            for m in ("engine", "no-ask-next", "evaluate"))
        print(f"  {row['factor']}x {row['rules']:>4} rules  {cells}")
    soak = report.get("engine_soak")
    if soak:
        print(f"\nEngine soak: {soak['evaluations']} evaluations in {soak['seconds']} s through one state, RSS "
              f"{soak['rss_kib_before']} -> {soak['rss_kib_after']} KiB ({soak['growth_pct']}%)")
    for h in report.get("http", []):
        if "skipped" in h:
            print(f"\nHTTP {h['config']}: skipped ({h['skipped']})")
            continue
        print(f"\nHTTP {h['config']}: gunicorn {h['worker_class']} x{h['workers']}"
              f"{' behind nginx' if h['nginx'] else ''}, wrk -t2, start-up to ready {h['startup_to_ready_s']} s:")
        print(f"{'conns':>5} {'endpoint':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8}")
        for run in h["runs"]:
            for name in ("health", "evaluations", "precomputed"):
                r = run[name]
                print(f"{run['connections']:>5} {name:<12} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                      f"{r['non_2xx']:>8} {r['socket_errors']:>8}")
            print(f"{'':>5} ratio to health: evaluations {run['ratio_eval_to_health']}, "
                  f"precomputed {run['ratio_precomputed_to_health']}")
        if "soak" in h:
            s = h["soak"]
            print(f"  soak: {s['evaluations']} evaluations, non-2xx {s['non_2xx']}, socket errors {s['socket_errors']}")
            for pid, m in s["rss_kib"].items():
                print(f"    worker {pid}: RSS {m['before']} -> {m['after']} KiB ({m['growth_pct']}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="in-process evaluations per group (default 2000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--soak", type=int, default=100_000, help="HTTP evaluations in the soak (0: none)")
    parser.add_argument("--engine-soak", type=int, default=100_000, help="in-process soak evaluations (0: none)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="worker set-ups, the deployed one first (default %(default)s)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the deploy config's)")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--out", help="JSON output (default bench/results/run-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.duration, args.soak, args.engine_soak = 300, 3, 2000, 5000
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")

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
            r = in_process(rules, args.n, {"typical": 20}, ("engine", "no-ask-next", "evaluate"))
            report["scaling"].append({"factor": factor, "rules": r["rules"], **{
                m: {key: r["groups"]["typical"][m][key] for key in ("p50_ms", "p99_ms")}
                for m in ("engine", "no-ask-next", "evaluate")}})
    if args.engine_soak:
        report["engine_soak"] = engine_soak(args.engine_soak)
    if not args.no_http:
        report["http"] = http(configs, args.duration, args.soak, args.workers)
    print_report(report)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"run-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
