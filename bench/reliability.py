"""Reliability under real gunicorn (deploy/gunicorn.conf.py, sync workers) on loopback.

    .venv/bin/python bench/reliability.py [--duration 60] [--soak 100000] [--workers 2]
                                          [--connections 32] [--kills 1] [--drain 3] [--quick] [--out FILE]
                                          [--worker-class sync|gthread] [--only load,soak,...]

One gunicorn (CDS_DRAIN_SECONDS=--drain, as the deploy sets it) serves checks a-d in this order;
check e starts gunicorn of its own:

  a. load     --connections concurrent clients for --duration seconds, POST /v1/evaluations with
              the clinical cases in rotation. Every answer is checked with service.checks.cases.compare
              against its case's expectation (and the served rule set's sha256), so a wrong answer
              counts as a failure like a 5xx, another status, a reset or a timeout.
  b. soak     --soak more evaluations the same way; VmRSS of every worker (/proc/<pid>/status)
              after warm-up, before and after the soak. Passes when no worker grew more than
              --rss-tolerance % over the soak and no worker was replaced.
  c. sigkill  under load, SIGKILL one worker (--kills times, the oldest worker each time). Only
              the requests the worker held may fail: the worker is stopped (SIGSTOP) just before the
              kill and the client connections it holds are counted from /proc/<pid>/fd and
              /proc/net/tcp. A sync worker holds one; a gthread worker (the deploy's default) also
              holds the connections it accepted for its thread pool. Recovery time: from the kill
              until a new worker pid is among the master's children
              (/proc/<master>/task/<master>/children) and has answered a request (its JSON request
              log line, which carries its pid).
  d. sigterm  under load, SIGTERM to the master. Clients keep sending for half the drain delay (a
              load balancer noticing /healthz/ready = 503), then stop. Every request sent before the
              signal and during the drain must be answered correctly; the master must exit 0.
  e. corrupt  a copy of rules/ with one domain file corrupted (a rule naming an undeclared finding;
              a file truncated inside a rule): gunicorn must exit non-zero without ever answering on
              its port, and its message must name the file (and the rule).

Encounters vary the patient's age, never across an age threshold of any rule (ages stay strictly
between the thresholds around the case's own age; a case without an age keeps none), and every
body is evaluated in process first: its case's expectation must hold, with the same tier and top 3.

Prints a report and writes JSON to bench/results/reliability-<timestamp>.json (or --out). Exits 1
if any check fails. Not part of the quick test suite (tests/test_reliability.py runs --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import latency  # noqa: E402  (bench/latency.py: percentiles, machine info)
import ops_support  # noqa: E402  (tests/ops_support.py: how the suite starts real gunicorn)
import pytest  # noqa: E402  (ops_support.wait_ready reports with pytest.fail)
import yaml  # noqa: E402

from service.checks.cases import compare  # noqa: E402
from service.config import DEFAULT_RULES_DIR  # noqa: E402
from service.errors import ServiceError  # noqa: E402
from service.intake.parse import parse_encounter  # noqa: E402
from service.knowledge.loader import load_knowledge  # noqa: E402
from service.knowledge.model import Knowledge  # noqa: E402
from service.reasoning.evaluation import Evaluator  # noqa: E402

PATH = "/v1/evaluations"
FAILURE_KINDS = ("5xx", "other-status", "wrong-answer", "connection", "timeout")
RECOVERY_TIMEOUT = 20.0
CORRUPT_TIMEOUT = 30.0


# --- encounters --------------------------------------------------------------------------------------


def age_thresholds(rules_dir: Path) -> list[float]:
    """Every value a rule compares the patient's age with (`{patient: age, op: ..., value: v}`)."""
    found: set[float] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("patient") == "age" and isinstance(node.get("value"), int | float):
                found.add(float(node["value"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted((rules_dir / "domains").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return sorted(found)


def varied_ages(age: float, thresholds: list[float], count: int) -> list[float]:
    """`count` ages strictly inside the open interval between the thresholds around `age` (so every
    age test of every rule gives the same result), at 0.01 years; [] when `age` is a threshold."""
    if age in thresholds:
        return []
    lo = max([t for t in thresholds if t < age], default=0.0)
    hi = min([t for t in thresholds if t > age], default=120.0)
    ages: list[float] = []
    for j in range(count):
        a = round(lo + (hi - lo) * (j + 0.5) / count, 2)
        if lo < a < hi and a != age and a not in ages:
            ages.append(a)
    return ages


@dataclass
class Pool:
    bodies: list[bytes]
    case_of: list[int]  # index into knowledge.cases
    expects: list[dict[str, Any]]
    info: dict[str, Any]


def build_pool(k: Knowledge, rules_dir: Path, per_case: int) -> Pool:
    evaluator = Evaluator(k)
    thresholds = age_thresholds(rules_dir)
    variants: list[list[dict[str, Any]]] = []
    kept_age: list[str] = []
    rejected: list[str] = []
    for case in k.cases:
        original = evaluator.evaluate(parse_encounter(k, case.request))
        if compare(case.expect, original):
            raise SystemExit(f"case {case.id} fails in process: {compare(case.expect, original)}")
        age = (case.request.get("patient") or {}).get("age")
        ages = varied_ages(float(age), thresholds, per_case - 1) if age is not None else []
        if not ages:
            kept_age.append(case.id)
        bodies = [case.request]
        for a in ages:
            body = json.loads(json.dumps(case.request))
            body["patient"]["age"] = a
            try:
                answer = evaluator.evaluate(parse_encounter(k, body))
            except ServiceError as exc:
                rejected.append(f"{case.id} age {a}: {exc.detail}")
                continue
            same = (answer["urgency"]["tier"] == original["urgency"]["tier"]
                    and [d["condition"] for d in answer["differential"]][:3]
                    == [d["condition"] for d in original["differential"]][:3])
            if compare(case.expect, answer) or not same:
                rejected.append(f"{case.id} age {a}: answer differs")
                continue
            bodies.append(body)
        variants.append(bodies)
    pool = Pool([], [], [], {})
    for j in range(max(len(v) for v in variants)):  # interleaved: consecutive requests are different cases
        for ci, bodies in enumerate(variants):
            if j < len(bodies):
                pool.bodies.append(json.dumps(bodies[j]).encode())
                pool.case_of.append(ci)
                pool.expects.append(k.cases[ci].expect)
    pool.info = {
        "cases": len(k.cases),
        "bodies": len(pool.bodies),
        "age_thresholds": thresholds,
        "cases_with_age_varied": len(k.cases) - len(kept_age),
        "cases_kept_as_written": kept_age,
        "variants_rejected_in_process": rejected,
    }
    return pool


# --- the load generator ----------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    start: float
    end: float
    kind: str  # "ok" or one of FAILURE_KINDS
    status: int | None
    detail: str
    case: int


class Load:
    """`connections` threads, each sending one request at a time on a fresh connection (gunicorn's
    sync workers close the connection after every answer), until stopped or `limit` were sent."""

    def __init__(self, port: int, pool: Pool, sha256: str, connections: int, *, limit: int | None = None,
                 offset: int = 0, timeout: float = 30.0) -> None:
        self.port, self.pool, self.sha256, self.connections = port, pool, sha256, connections
        self.limit, self.offset, self.timeout = limit, offset, timeout
        self.outcomes: list[Outcome] = []
        self._counter = itertools.count()
        self._sending = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = self.stopped_at = 0.0

    def start(self) -> Load:
        self._sending.set()
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"client-{i}")
                         for i in range(self.connections)]
        for t in self._threads:
            t.start()
        return self

    def stop_sending(self) -> None:
        self._sending.clear()

    def join(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.stopped_at = time.monotonic()
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError("client threads did not finish")

    def run_for(self, seconds: float) -> Load:
        self.start()
        time.sleep(seconds)
        self.stop_sending()
        self.join()
        return self

    def run_count(self) -> Load:
        self.start()
        self.join(timeout=24 * 3600)
        return self

    def _run(self) -> None:
        while self._sending.is_set():
            i = next(self._counter)
            if self.limit is not None and i >= self.limit:
                return
            self.outcomes.append(self._one((self.offset + i) % len(self.pool.bodies)))

    def _one(self, idx: int) -> Outcome:
        body = self.pool.bodies[idx]
        status: int | None = None
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("POST", PATH, body=body,
                         headers={"Content-Type": "application/json", "Connection": "close"})
            resp = conn.getresponse()
            status = resp.status
            data = resp.read()
        except TimeoutError as exc:
            return Outcome(t0, time.monotonic(), "timeout", status, exc.__class__.__name__, idx)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(t0, time.monotonic(), "connection", status, exc.__class__.__name__, idx)
        finally:
            conn.close()
        t1 = time.monotonic()
        if status >= 500:
            return Outcome(t0, t1, "5xx", status, data[:200].decode("utf-8", "replace"), idx)
        if status != 200:
            return Outcome(t0, t1, "other-status", status, data[:200].decode("utf-8", "replace"), idx)
        try:
            answer = json.loads(data)
            problems = compare(self.pool.expects[idx], answer)
            if answer["ruleset"]["sha256"] != self.sha256:
                problems.append(f"served rule set {answer['ruleset']['sha256'][:12]} is not {self.sha256[:12]}")
        except (ValueError, KeyError, TypeError) as exc:
            problems = [f"unreadable answer: {exc.__class__.__name__}"]
        if problems:
            return Outcome(t0, t1, "wrong-answer", status, "; ".join(problems)[:300], idx)
        return Outcome(t0, t1, "ok", status, "", idx)


def summarize(outcomes: list[Outcome], k: Knowledge, pool: Pool, seconds: float | None = None) -> dict[str, Any]:
    kinds = Counter(o.kind for o in outcomes)
    lat = sorted(int((o.end - o.start) * 1e9) for o in outcomes if o.kind != "connection")
    examples: dict[str, list[str]] = {}
    for o in outcomes:
        if o.kind != "ok" and len(examples.setdefault(o.kind, [])) < 3:
            examples[o.kind].append(f"case {k.cases[pool.case_of[o.case]].id}: status {o.status} {o.detail}")
    out: dict[str, Any] = {
        "sent": len(outcomes),
        "answered_correctly": kinds.get("ok", 0),
        "failures": {kind: kinds.get(kind, 0) for kind in FAILURE_KINDS},
        "failures_total": sum(kinds.get(kind, 0) for kind in FAILURE_KINDS),
        "failure_examples": examples,
        "latency_ms": {
            "p50": round(latency.percentile(lat, 50), 3) if lat else None,
            "p90": round(latency.percentile(lat, 90), 3) if lat else None,
            "p99": round(latency.percentile(lat, 99), 3) if lat else None,
            "max": round(lat[-1] / 1e6, 3) if lat else None,
        },
    }
    if seconds:
        out["seconds"] = round(seconds, 2)
        out["requests_per_s"] = round(len(outcomes) / seconds, 1)
    return out


# --- processes ---------------------------------------------------------------------------------------


def worker_pids(master: int) -> list[int]:
    try:
        return sorted(int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split())
    except OSError:
        return []


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def process_start(pid: int) -> int:
    """Start time of the process in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def held_connections(pid: int, port: int) -> int:
    """Client connections to `port` that process `pid` holds open (ESTABLISHED or CLOSE_WAIT)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if (int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] in ("01", "08")
                        and int(cols[9]) in inodes):
                    held += 1
    return held


class LogTail:
    """The server's stdout (one JSON object per line), read from where it was last left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def lines(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.offset += end
        out = []
        for raw in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out


# --- checks ------------------------------------------------------------------------------------------


def server_worker_class(server: ops_support.Gunicorn) -> str | None:
    """From gunicorn's own start-up line "Using worker: <class>"."""
    for path in (server.stderr_path, server.stdout_path):  # gunicorn's error log is stderr ("-")
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in itertools.islice(fh, 200):
                if "Using worker: " in line:
                    return line.split("Using worker: ", 1)[1].split('"', 1)[0].strip()
    return None


def check_load(server: ops_support.Gunicorn, k: Knowledge, pool: Pool, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(server.port, pool, k.sha256, args.connections).run_for(args.duration)
    res = {"connections": args.connections, "duration_s": args.duration,
           **summarize(load.outcomes, k, pool, load.stopped_at - load.started_at)}
    res["passed"] = res["sent"] > 0 and res["failures_total"] == 0
    return res


def check_soak(server: ops_support.Gunicorn, k: Knowledge, pool: Pool, args: argparse.Namespace,
               after_warmup: dict[int, dict[str, int]]) -> dict[str, Any]:
    pids = worker_pids(server.proc.pid)
    before = {pid: memory_kib(pid) for pid in pids}
    load = Load(server.port, pool, k.sha256, args.connections, limit=args.soak, offset=7).run_count()
    after_pids = worker_pids(server.proc.pid)
    after = {pid: memory_kib(pid) for pid in after_pids}
    rss: dict[str, Any] = {}
    worst = 0.0
    for pid in sorted(set(pids) | set(after_pids)):
        b, a = before.get(pid, {}).get("VmRSS"), after.get(pid, {}).get("VmRSS")
        growth = round(100.0 * (a - b) / b, 2) if a and b else None
        if growth is not None:
            worst = max(worst, growth)
        rss[str(pid)] = {
            "after_warmup_kib": after_warmup.get(pid, {}).get("VmRSS"),
            "start_kib": b, "end_kib": a, "growth_pct": growth,
            "rss_anon_start_kib": before.get(pid, {}).get("RssAnon"),
            "rss_anon_end_kib": after.get(pid, {}).get("RssAnon"),
        }
    res = {"evaluations": args.soak, **summarize(load.outcomes, k, pool, load.stopped_at - load.started_at),
           "workers_unchanged": pids == after_pids, "rss": rss, "max_growth_pct": round(worst, 2),
           "tolerance_pct": args.rss_tolerance}
    res["passed"] = (res["failures_total"] == 0 and res["workers_unchanged"] and len(pids) == args.workers
                     and all(v["growth_pct"] is not None and v["growth_pct"] <= args.rss_tolerance
                             for v in rss.values()))
    return res


def check_sigkill(server: ops_support.Gunicorn, k: Knowledge, pool: Pool, args: argparse.Namespace) -> dict[str, Any]:
    master = server.proc.pid
    load = Load(server.port, pool, k.sha256, args.connections, offset=11).start()
    kills: list[dict[str, Any]] = []
    try:
        time.sleep(1.0)
        for _ in range(args.kills):
            old = worker_pids(master)
            victim = min(old, key=process_start)  # the oldest worker
            tail = LogTail(server.stdout_path)
            os.kill(victim, signal.SIGSTOP)  # frozen: the connections it holds cannot change
            time.sleep(0.01)
            held = held_connections(victim, server.port)
            t_kill = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            new_pid = t_spawn = t_serve = None
            deadline = t_kill + RECOVERY_TIMEOUT
            while time.monotonic() < deadline and t_serve is None:
                if new_pid is None:
                    fresh = set(worker_pids(master)) - set(old)
                    if fresh:
                        new_pid, t_spawn = min(fresh), time.monotonic()
                if new_pid is not None and any(
                        line.get("pid") == new_pid and line.get("event") == "request" for line in tail.lines()):
                    t_serve = time.monotonic()
                    break
                time.sleep(0.002)
            now = worker_pids(master)
            kills.append({"t_kill": t_kill, "victim": victim, "held_connections": held, "new_worker": new_pid,
                          "spawned_after_ms": round((t_spawn - t_kill) * 1000, 1) if t_spawn else None,
                          "recovery_ms": round((t_serve - t_kill) * 1000, 1) if t_serve else None,
                          "victim_gone": victim not in now, "workers_after": len(now)})
            time.sleep(1.0)  # under load with the new worker
    finally:
        load.stop_sending()
        load.join()
    failures = [o for o in load.outcomes if o.kind != "ok"]
    for kill in kills:
        t = kill.pop("t_kill")
        kill["failed_requests"] = sum(1 for o in failures if o.start < t <= o.end + 0.001)
    in_flight = sum(kill["failed_requests"] for kill in kills)
    held = sum(kill["held_connections"] for kill in kills)
    allowed = min(held, args.kills) if server_worker_class(server) == "sync" else held
    res = {"worker_class": server_worker_class(server), "kills": kills,
           **summarize(load.outcomes, k, pool, load.stopped_at - load.started_at),
           "held_connections": held, "allowed_failures": allowed, "in_flight_failures": in_flight}
    recoveries = [kill["recovery_ms"] for kill in kills]
    res["recovery_ms_max"] = max(recoveries) if recoveries and None not in recoveries else None
    res["passed"] = (
        len(kills) == args.kills
        and all(kill["recovery_ms"] is not None and kill["victim_gone"] and kill["workers_after"] == args.workers
                for kill in kills)
        and res["failures_total"] <= allowed  # at most what the worker held (a sync worker holds one)
        and res["failures_total"] == in_flight  # ... and only requests in flight at the kill failed
        and all(o.kind in ("connection",) for o in failures)
    )
    return res


def check_sigterm(server: ops_support.Gunicorn, k: Knowledge, pool: Pool, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(server.port, pool, k.sha256, args.connections, offset=13).start()
    time.sleep(1.0)
    t_term = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    ready_during_drain = None
    time.sleep(min(0.3, args.drain / 4))
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/healthz/ready", headers={"Connection": "close"})
        resp = conn.getresponse()
        ready_during_drain = f"{resp.status} {json.loads(resp.read()).get('status')}"
        conn.close()
    time.sleep(max(0.0, t_term + args.drain / 2 - time.monotonic()))  # a load balancer noticing readiness
    load.stop_sending()
    load.join()
    try:
        code: int | None = server.proc.wait(timeout=args.drain + 30)
    except subprocess.TimeoutExpired:
        code = None
    t_exit = time.monotonic()
    before = [o for o in load.outcomes if o.start < t_term]
    during = [o for o in load.outcomes if o.start >= t_term]
    res = {
        "drain_seconds": args.drain,
        "sent_before_signal": len(before),
        "dropped_before_signal": sum(1 for o in before if o.kind != "ok"),
        "sent_during_drain": len(during),
        "failed_during_drain": sum(1 for o in during if o.kind != "ok"),
        "ready_during_drain": ready_during_drain,
        "master_exit_code": code,
        "exit_after_s": round(t_exit - t_term, 2) if code is not None else None,
        "port_closed_after_exit": not ops_support.port_answers(server.port),
        **summarize(load.outcomes, k, pool, load.stopped_at - load.started_at),
    }
    res["passed"] = (res["sent_before_signal"] > 0 and res["dropped_before_signal"] == 0
                     and res["failed_during_drain"] == 0 and code == 0 and res["port_closed_after_exit"])
    return res


def corrupt_rules(variant: str, target: Path) -> tuple[str, str | None]:
    """A copy of rules/ with one domain file corrupted; returns (file, rule id expected in the message)."""
    shutil.copytree(DEFAULT_RULES_DIR, target)
    path = sorted((target / "domains").glob("*.yaml"))[-1]
    rel = path.relative_to(target).as_posix()
    text = path.read_text(encoding="utf-8")
    if variant == "undeclared-finding":
        doc = yaml.safe_load(text)
        rule = json.loads(json.dumps(doc["rules"][0]))
        rule["id"] = rule["id"] + ".corrupted"
        rule["when"] = {"all": [{"finding": "reliability_undeclared_finding"}]}
        doc["rules"].append(rule)
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return rel, rule["id"]
    # truncated inside a rule: in the middle of the third rule's `when:` block
    starts = [i for i in range(len(text)) if text.startswith("\n  - id: ", i)]
    at = starts[2] if len(starts) > 2 else len(text) // 2
    when = text.find("\n    when:", at)
    cut = when + len("\n    when:\n      a") if when > 0 else at + 20
    rule_id = text[at:].split("id:", 1)[1].split("\n", 1)[0].strip() if len(starts) > 2 else None
    path.write_text(text[:cut], encoding="utf-8")
    return rel, rule_id


def check_corrupt(tmp: Path) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    for variant in ("undeclared-finding", "truncated"):
        rules = tmp / f"rules-{variant}"
        rel, rule_id = corrupt_rules(variant, rules)
        port = ops_support.free_port()
        env = ops_support.gunicorn_env(port, CDS_RULES_DIR=str(rules), CDS_ACCESS_LOG="off")
        answered = False
        out_path = tmp / f"{variant}.log"
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(ops_support.GUNICORN, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
            try:
                while proc.poll() is None and time.monotonic() - t0 < CORRUPT_TIMEOUT:
                    answered = answered or ops_support.port_answers(port)
                    time.sleep(0.05)
                answered = answered or ops_support.port_answers(port)
                code = proc.poll()
            finally:
                ops_support.stop(proc)
        output = out_path.read_text(encoding="utf-8", errors="replace")
        lines = output.splitlines()
        error = next((ln.strip() for ln in lines if "RuleLoadError" in ln or "failed to load" in ln), None)
        first = next((ln.strip() for ln in lines if rel in ln), None)
        names_rule = rule_id is None or (first is not None and rule_id in output)
        variants[variant] = {
            "file": rel, "rule": rule_id, "exit_code": code, "exited_after_s": round(time.monotonic() - t0, 2),
            "answered_on_port": answered, "error": error, "message_first_line": first,
            "traceback_printed": "Traceback" in output,
        }
        variants[variant]["passed"] = (code is not None and code != 0 and not answered
                                       and first is not None and names_rule)
    return {"variants": variants, "passed": all(v["passed"] for v in variants.values())}


# --- report ------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    c = report["checks"]
    enc = report["encounters"]
    server = report.get("server", {})
    print(f"\nrule set {report['ruleset']['version']} ({report['ruleset']['sha256'][:12]}), gunicorn "
          f"{report['params']['workers']} {server.get('worker_class')} workers, "
          f"{report['params']['connections']} connections; "
          f"{enc['bodies']} encounter bodies from {enc['cases']} cases "
          f"({enc['cases_with_age_varied']} with ages varied inside their age band)")

    def line(name: str, r: dict[str, Any] | None, text: str) -> None:
        if r is None:
            return
        status = "PASS" if r.get("passed") else "FAIL"
        print(f"  [{status}] {name:<8} {text if 'error' not in r else 'error: ' + r['error']}")

    def fails(r: dict[str, Any]) -> str:
        f = {kind: n for kind, n in r.get("failures", {}).items() if n}
        return ", ".join(f"{kind} {n}" for kind, n in f.items()) or "none"

    r = c.get("load")
    if r and "error" not in r:
        line("load", r, f"{r['sent']} requests in {r['seconds']} s ({r['requests_per_s']}/s); failures: {fails(r)}; "
                        f"latency p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms")
    else:
        line("load", r, "")
    r = c.get("soak")
    if r and "error" not in r:
        line("soak", r, f"{r['sent']} evaluations; failures: {fails(r)}; max RSS growth {r['max_growth_pct']}% "
                        f"(tolerance {r['tolerance_pct']}%), workers unchanged: {r['workers_unchanged']}")
        for pid, m in r["rss"].items():
            print(f"             worker {pid}: RSS {m['after_warmup_kib']} (after warm-up) / {m['start_kib']} -> "
                  f"{m['end_kib']} KiB ({m['growth_pct']}%)")
    else:
        line("soak", r, "")
    r = c.get("sigkill")
    if r and "error" not in r:
        line("sigkill", r, f"{len(r['kills'])} kill(s) under load; {r['sent']} requests, failures: {fails(r)} "
                           f"(allowed {r['allowed_failures']}: the connections the killed {r['worker_class']} "
                           f"worker held)")
        for kill in r["kills"]:
            print(f"             worker {kill['victim']} (held {kill['held_connections']} connection(s)) -> "
                  f"{kill['new_worker']}: spawned after {kill['spawned_after_ms']} ms, serving after "
                  f"{kill['recovery_ms']} ms; {kill['failed_requests']} request(s) failed")
    else:
        line("sigkill", r, "")
    r = c.get("sigterm")
    if r and "error" not in r:
        line("sigterm", r, f"{r['sent_before_signal']} sent before the signal, {r['dropped_before_signal']} dropped; "
                           f"{r['sent_during_drain']} sent during the drain, {r['failed_during_drain']} failed; "
                           f"ready during drain: {r['ready_during_drain']}; master exit {r['master_exit_code']} "
                           f"after {r['exit_after_s']} s")
    else:
        line("sigterm", r, "")
    r = c.get("corrupt")
    if r and "error" not in r:
        line("corrupt", r, "")
        for name, v in r["variants"].items():
            print(f"             {name}: exit {v['exit_code']} after {v['exited_after_s']} s, answered on port: "
                  f"{v['answered_on_port']}; {v['message_first_line']}")
    else:
        line("corrupt", r, "")
    print(f"\n{'ALL CHECKS PASSED' if report['passed'] else 'SOME CHECKS FAILED'}")


def run_check(report: dict[str, Any], name: str, fn: Any, *fn_args: Any) -> None:
    print(f"... {name}", flush=True)
    try:
        report["checks"][name] = fn(*fn_args)
    except (Exception, pytest.fail.Exception) as exc:
        report["checks"][name] = {"passed": False, "error": f"{exc.__class__.__name__}: {exc}"[:2000]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sustained load (default 60)")
    parser.add_argument("--soak", type=int, default=100_000, help="evaluations in the memory soak (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, at least 2 (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--kills", type=int, default=1, help="workers killed with SIGKILL, one at a time (default 1)")
    parser.add_argument("--worker-class", choices=("sync", "gthread"),
                        help="CDS_WORKER_CLASS for the server (default: the deploy config's)")
    parser.add_argument("--drain", type=float, default=3.0, help="CDS_DRAIN_SECONDS for the server (default 3)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring (default 3)")
    parser.add_argument("--rss-tolerance", type=float, default=5.0,
                        help="largest RSS growth of a worker over the soak, in %% (default 5)")
    parser.add_argument("--per-case", type=int, default=20, help="encounter bodies per clinical case (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: load 5 s, soak 2000, warm-up 1 s")
    parser.add_argument("--only", help="comma-separated subset of load,soak,sigkill,sigterm,corrupt")
    parser.add_argument("--out", help="JSON output (default bench/results/reliability-<timestamp>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.soak, args.warmup = 5.0, 2000, 1.0
    if args.workers < 2 or args.connections < 1 or args.kills < 1 or args.soak < 1 or args.duration <= 0:
        parser.error("--workers must be at least 2; --connections, --kills, --soak and --duration positive")
    only = set(args.only.split(",")) if args.only else {"load", "soak", "sigkill", "sigterm", "corrupt"}

    k = load_knowledge(DEFAULT_RULES_DIR)
    t0 = time.monotonic()
    pool = build_pool(k, DEFAULT_RULES_DIR, args.per_case)
    print(f"{pool.info['bodies']} encounter bodies from {len(k.cases)} cases, each checked in process "
          f"({time.monotonic() - t0:.1f} s)", flush=True)
    now = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "benchmark": "reliability under real gunicorn",
        "when": now.isoformat(timespec="seconds"),
        "machine": latency.machine_info(),
        "ruleset": {"name": k.name, "version": k.version, "sha256": k.sha256, "rules": len(k.rules)},
        "params": {key: getattr(args, key) for key in
                   ("duration", "soak", "workers", "worker_class", "connections", "kills", "drain", "warmup",
                    "rss_tolerance", "per_case", "quick")},
        "encounters": pool.info,
        "checks": {},
    }
    with tempfile.TemporaryDirectory(prefix="legpain-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        if only & {"load", "soak", "sigkill", "sigterm"}:
            try:
                extra = {"CDS_WORKER_CLASS": args.worker_class} if args.worker_class else {}
                with ops_support.gunicorn(tmp / "server", CDS_WORKERS=str(args.workers),
                                          CDS_DRAIN_SECONDS=str(args.drain), CDS_ACCESS_LOG="off", **extra) as server:
                    report["server"] = {"master_pid": server.proc.pid, "port": server.port,
                                        "worker_class": server_worker_class(server),
                                        "workers": len(worker_pids(server.proc.pid))}
                    Load(server.port, pool, k.sha256, args.connections, offset=3).run_for(args.warmup)
                    after_warmup = {pid: memory_kib(pid) for pid in worker_pids(server.proc.pid)}
                    if "load" in only:
                        run_check(report, "load", check_load, server, k, pool, args)
                    if "soak" in only:
                        run_check(report, "soak", check_soak, server, k, pool, args, after_warmup)
                    if "sigkill" in only:
                        run_check(report, "sigkill", check_sigkill, server, k, pool, args)
                    if "sigterm" in only:
                        run_check(report, "sigterm", check_sigterm, server, k, pool, args)
            except (Exception, pytest.fail.Exception) as exc:
                report["server_error"] = f"{exc.__class__.__name__}: {exc}"[:3000]
                for name in ("load", "soak", "sigkill", "sigterm"):
                    if name in only:
                        report["checks"].setdefault(name, {"passed": False, "error": "the server did not start"})
        if "corrupt" in only:
            run_check(report, "corrupt", check_corrupt, tmp)
    report["passed"] = bool(report["checks"]) and all(c.get("passed") for c in report["checks"].values())
    print_report(report)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"reliability-{now:%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
