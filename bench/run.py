"""The performance harness: every figure in one run, so that ratios hold on a noisy machine.

    .venv/bin/python bench/run.py [--duration 5] [--rounds 3] [--soak 100000] [--engine-soak 100000]
                                  [--configs nginx-sync,nginx-gthread,gthread,sync] [--quick]
                                  [--no-http | --http-only]

1. In-process latency (p50 / p99, ms) for small (<=5), typical (20) and large (60) encounters on
   the real rule set, timed interleaved: `engine` (the adapter), `engine-before` (the adapter as
   it was: a fresh durable-rules session per evaluation, tests/reference/engine_fresh_session.py),
   `no-ask-next` (engine + the answer, ask_next left empty), `evaluate` (the whole answer),
   `evaluate-before` (the whole answer with ask_next as it was before issue 18 part 2,
   tests/reference/ask_next_reference.py) and `request` (parse + validate + evaluate + serialise,
   what a request costs minus HTTP).
2. Growth with the number of rules: synthetic rule sets of 1x, 2x and 4x the real one (every
   rule copied under a new id), the same typical encounters through each, the factors timed
   interleaved (the whole evaluation in a timing of its own), with each factor's ratio to 1x.
3. Engine soak: `--engine-soak` evaluations through one engine state, RSS before and after.
4. HTTP under real gunicorn with the deploy config, for each worker set-up of `--configs`, all
   started at once and measured in interleaved rounds (each round gives its own ratios)
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
from service.intake.parse import parse_encounter  # noqa: E402
from service.knowledge.loader import load_knowledge  # noqa: E402
from service.reasoning.engine import Engine  # noqa: E402
from service.reasoning.evaluation import Evaluator  # noqa: E402
from tests.reference import ask_next_reference, engine_fresh_session  # noqa: E402  (as before issue 18)

SIZES = {"small": None, "typical": 20, "large": 60}
MODES = ("engine", "engine-before", "no-ask-next", "evaluate", "evaluate-before", "request")
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
    uncompiled = Evaluator(k, engine=evaluator.engine)
    uncompiled.ranker = ask_next_reference.QuestionRanker(k)  # type: ignore[assignment]
    fns = {
        "engine": lambda raw, enc: evaluator.engine.evaluate(enc.facts()),
        "engine-before": lambda raw, enc: before.evaluate(enc.facts()),
        "no-ask-next": lambda raw, enc: bare.evaluate(enc),
        "evaluate": lambda raw, enc: evaluator.evaluate(enc),
        "evaluate-before": lambda raw, enc: uncompiled.evaluate(enc),
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


def scaling(n: int, factors: tuple[int, ...] = (1, 2, 4)) -> list[dict[str, Any]]:
    """The same typical encounters through every factor's rule set, interleaved: the engine and
    the answer without ask_next in one timing, the whole evaluation (much slower at 4x, and
    making garbage that would land on the others' timings) in a second one."""
    with tempfile.TemporaryDirectory() as tmp:
        ks = {f: load_knowledge(scaled_rules(f, Path(tmp) / f"x{f}")) for f in factors}
    raws, encs = latency.build_inputs(ks[factors[0]], n, offset=20_000, target=20)  # same vocabulary
    warm = latency.build_inputs(ks[factors[0]], 200, offset=90_000, target=20)
    light: dict[str, Any] = {}
    heavy: dict[str, Any] = {}
    for f, k in ks.items():
        m = modes(k, ("engine", "no-ask-next", "evaluate"))
        light[f"engine {f}"], light[f"no-ask-next {f}"], heavy[f"evaluate {f}"] = (
            m["engine"], m["no-ask-next"], m["evaluate"])
    timings: dict[str, list[int]] = {}
    for fns in (light, heavy):
        for raw, enc in zip(*warm, strict=True):
            for fn in fns.values():
                fn(raw, enc)
        timings.update(latency.time_interleaved(fns, {name: (raws, encs) for name in fns}))
    return [
        {"factor": f, "rules": len(k.rules), **{
            m: {key: latency.stats(timings[f"{m} {f}"])[key] for key in ("p50_ms", "p99_ms")}
            for m in ("engine", "no-ask-next", "evaluate")}}
        for f, k in ks.items()
    ]


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


class Stack:
    """One worker set-up, running: gunicorn (the ceiling app) and, for nginx-*, the sidecar."""

    def __init__(self, config: str, workers: int | None, tmp: Path) -> None:
        self.config = config
        self.worker_class = config.removeprefix("nginx-")
        self.proxied = config.startswith("nginx-")
        self.nginx: subprocess.Popen[bytes] | None = None
        port = free_port()
        self.proc, startup = start_server(port, workers, CDS_WORKER_CLASS=self.worker_class)
        self.startup_s = round(startup, 3)
        front = port
        if self.proxied:
            found = nginx_binary()
            if found is None:
                self.close()
                raise SystemExit("nginx is not installed (scripts/setup-system.sh); leave out the nginx-* configs")
            (tmp / config).mkdir()
            self.nginx, front = start_nginx(found, tmp / config, port)
        self.base = f"http://127.0.0.1:{front}"

    def close(self) -> None:
        if self.nginx is not None:
            stop(self.nginx, signal.SIGQUIT)
        stop(self.proc)


ENDPOINTS = ("health", "evaluations", "precomputed")


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """wrk runs of one endpoint pooled: throughput over all of them, worst latency and errors."""
    seconds = sum(r["seconds"] for r in runs)
    return {
        "requests": sum(r["requests"] for r in runs),
        "rps": round(sum(r["requests"] for r in runs) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(sorted(r["p50_ms"] for r in runs)[len(runs) // 2], 2),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
    }


def http(configs: list[str], duration: int, rounds: int, soak: int, workers: int | None) -> list[dict[str, Any]]:
    """Every set-up started at once; then, round after round, each set-up in turn gets health,
    evaluations and precomputed at 16 and 64 connections. Noise from the rest of the machine
    falls on every set-up alike, and each round gives its own ratios (reported as a range)."""
    binary = ensure_wrk()
    k = load_knowledge(DEFAULT_RULES_DIR)
    bodies, _ = latency.build_inputs(k, 2000, offset=50_000, target=20)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scripts = {"evaluations": lua_script(bodies, tmp, "/v1/evaluations"),
                   "precomputed": lua_script(bodies, tmp, "/bench/precomputed"), "health": None}
        paths = {"health": "/healthz/live", "evaluations": "/v1/evaluations", "precomputed": "/bench/precomputed"}
        stacks: list[Stack] = []
        try:
            for c in configs:
                stacks.append(Stack(c, workers, tmp))
            rss_before: dict[int, int] = {}
            for st in stacks:
                for e in ENDPOINTS:  # warm up every path
                    wrk(binary, st.base + paths[e], 16, 2, scripts[e])
            for pid in worker_pids(stacks[0].proc.pid):
                rss_before[pid] = rss_kib(pid)
            raw: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for _ in range(rounds):
                for connections in (16, 64):
                    for st in stacks:
                        got = {e: wrk(binary, st.base + paths[e], connections, duration, scripts[e]) for e in ENDPOINTS}
                        raw.setdefault((st.config, connections), []).append(got)
            results = []
            for st in stacks:
                runs = []
                for connections in (16, 64):
                    rr = raw[(st.config, connections)]
                    pooled = {e: _pool([r[e] for r in rr]) for e in ENDPOINTS}
                    per_round = {
                        f"ratio_{e}_to_health": sorted(round(r[e]["rps"] / r["health"]["rps"], 3) for r in rr)
                        for e in ("evaluations", "precomputed")
                    }
                    runs.append({
                        "connections": connections, **pooled, "rounds": per_round,
                        "ratio_eval_to_health": round(pooled["evaluations"]["rps"] / pooled["health"]["rps"], 3),
                        "ratio_precomputed_to_health": round(
                            pooled["precomputed"]["rps"] / pooled["health"]["rps"], 3),
                    })
                results.append({"config": st.config, "worker_class": st.worker_class, "nginx": st.proxied,
                                "workers": len(worker_pids(st.proc.pid)), "startup_to_ready_s": st.startup_s,
                                "seconds_per_run": duration, "rounds": rounds, "runs": runs})
            if soak:
                results[0]["soak"] = http_soak(binary, stacks[0], scripts["evaluations"], soak, rss_before,
                                               max(r["evaluations"]["rps"] for r in results[0]["runs"]))
            return results
        finally:
            for st in stacks:
                st.close()


def http_soak(binary: str, st: Stack, script: Path | None, soak: int, rss_before: dict[int, int],
              rps: float) -> dict[str, Any]:
    sent = 0
    soak_runs = []
    rps = rps or 100.0
    rss_warm: dict[int, int] = {}
    while sent < soak:  # wrk runs for a time: repeat until the count is reached
        # the first fifth of the soak warms up too: the bounded fact caches fill with its ages
        target = soak // 5 if not rss_warm else soak
        seconds = max(2, int((target - sent) / rps) + 1)
        run = wrk(binary, st.base + "/v1/evaluations", 16, seconds, script)
        soak_runs.append(run)
        sent += run["requests"]
        if not rss_warm:
            rss_warm = {pid: rss_kib(pid) for pid in worker_pids(st.proc.pid)}
            warm_sent = sent
    rss_after = {pid: rss_kib(pid) for pid in worker_pids(st.proc.pid)}
    return {
        "evaluations": sent,
        "warm_after": warm_sent,
        "rss_kib_after_warm_up": {
            str(pid): {"warm": rss_warm.get(pid), "after": rss_after.get(pid),
                       "growth_pct": round(100 * (rss_after[pid] - rss_warm[pid]) / rss_warm[pid], 2)
                       if pid in rss_warm and pid in rss_after else None}
            for pid in sorted(set(rss_warm) | set(rss_after))
        },
        "non_2xx": sum(r["non_2xx"] for r in soak_runs),
        "socket_errors": sum(r["socket_errors"] for r in soak_runs),
        "rss_kib": {
            str(pid): {"before": rss_before.get(pid), "after": rss_after.get(pid),
                       "growth_pct": round(100 * (rss_after[pid] - rss_before[pid]) / rss_before[pid], 2)
                       if pid in rss_before and pid in rss_after else None}
            for pid in sorted(set(rss_before) | set(rss_after))
        },
    }


# --- report ------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b else "-"


def print_report(report: dict[str, Any]) -> None:
    if "in_process" in report:
        print_in_process(report)
    print_http(report)


def print_in_process(report: dict[str, Any]) -> None:
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


def print_http(report: dict[str, Any]) -> None:
    hs = report.get("http", [])
    if not hs:
        return
    print(f"\nHTTP, wrk -t2, {hs[0]['rounds']} interleaved rounds of {hs[0]['seconds_per_run']} s per endpoint "
          "(ratios: pooled, and [lowest .. highest] round):")
    print(f"{'set-up':<14} {'conns':>5} {'health/s':>9} {'evals/s':>8} {'eval p50/p99 ms':>16} {'errors':>6} "
          f"{'evals/health':>22} {'precomputed/health':>24}")
    for h in hs:
        label = f"{h['config']} x{h['workers']}"
        for run in h["runs"]:
            ev = run["evaluations"]
            errors = sum(run[e]["non_2xx"] + run[e]["socket_errors"] for e in ENDPOINTS)
            er, pr = run["rounds"]["ratio_evaluations_to_health"], run["rounds"]["ratio_precomputed_to_health"]
            print(f"{label:<14} {run['connections']:>5} {run['health']['rps']:>9.0f} {ev['rps']:>8.0f} "
                  f"{ev['p50_ms']:>7.1f}/{ev['p99_ms']:<8.1f} {errors:>6} "
                  f"{run['ratio_eval_to_health']:>6.3f} [{er[0]:.2f} .. {er[-1]:.2f}]     "
                  f"{run['ratio_precomputed_to_health']:>6.3f} [{pr[0]:.2f} .. {pr[-1]:.2f}]")
        if "soak" in h:
            s = h["soak"]
            print(f"  soak ({h['config']}): {s['evaluations']} evaluations, non-2xx {s['non_2xx']}, "
                  f"socket errors {s['socket_errors']}")
            for pid, m in s["rss_kib"].items():
                w = s["rss_kib_after_warm_up"].get(pid, {})
                print(f"    worker {pid}: RSS {m['before']} -> {m['after']} KiB ({m['growth_pct']}%); "
                      f"after the first {s['warm_after']}: {w.get('warm')} -> {w.get('after')} KiB "
                      f"({w.get('growth_pct')}%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="in-process evaluations per group (default 2000)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved HTTP rounds (default 3)")
    parser.add_argument("--soak", type=int, default=100_000, help="HTTP evaluations in the soak (0: none)")
    parser.add_argument("--engine-soak", type=int, default=100_000, help="in-process soak evaluations (0: none)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="worker set-ups, the deployed one first (default %(default)s)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the deploy config's)")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--http-only", action="store_true", help="HTTP figures only (e.g. to repeat them)")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--out", help="JSON output (default bench/results/run-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.duration, args.rounds, args.soak, args.engine_soak = 300, 2, 1, 2000, 5000
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")

    k = load_knowledge(DEFAULT_RULES_DIR)
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": latency.machine_info(),
        "ruleset": {"name": k.name, "version": k.version, "sha256": k.sha256, "rules": len(k.rules)},
    }
    if not args.http_only:
        report["in_process"] = in_process(DEFAULT_RULES_DIR, args.n, SIZES)
    if not args.http_only:
        report["scaling"] = scaling(args.n)
    if args.engine_soak and not args.http_only:
        report["engine_soak"] = engine_soak(args.engine_soak)
    if not args.no_http:
        report["http"] = http(configs, args.duration, args.rounds, args.soak, args.workers)
    print_report(report)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"run-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
