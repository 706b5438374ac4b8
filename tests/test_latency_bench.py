"""bench/latency.py runs end to end, including its `wsgi` mode (POST /v1/evaluations through the
whole app), whose runner stops the benchmark on any answer but 200: so a passing run shows the
mode times real evaluations, not error pages.

Run as a subprocess: the `wsgi` mode points the service's log handler at /dev/null, which must
not leak into the other tests' process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "latency.py"


def test_every_mode_and_group_is_timed(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--n", "5", "--warmup", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    report = json.loads(out.read_text(encoding="utf-8"))
    timed = {(r["group"], r["mode"]): r for r in report["results"]}
    assert set(timed) == {(g, m) for g in ("small", "typical", "large")
                          for m in ("engine", "evaluate", "request", "wsgi")}
    for (group, mode), r in timed.items():
        assert r["n"] == 5 and r["p50_ms"] > 0, (group, mode, r)
    assert "wsgi" in report["params"]["modes"]
    # The whole app does more than the engine alone (minima: a noisy machine only adds time).
    assert timed["typical", "wsgi"]["min_ms"] > timed["typical", "engine"]["min_ms"]
