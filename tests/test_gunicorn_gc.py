"""deploy/gunicorn.conf.py freezes the master's objects before each fork (pre_fork), so that a
worker's full garbage collections skip the preloaded app and leave its pages shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, runpy
ns = runpy.run_path("deploy/gunicorn.conf.py")
before = gc.get_freeze_count()
tracked = len(gc.get_objects())
ns["pre_fork"](None, None)
print(before, gc.get_freeze_count(), tracked, len(gc.get_objects()))
"""


def test_pre_fork_freezes_what_the_master_holds(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "CDS_HOOKS_REPLAY_DB": str(tmp_path / "jti.sqlite3")}
    (tmp_path / "metrics").mkdir()
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    before, frozen, tracked, after = map(int, out.stdout.split())
    # Python 3.12 starts with a few hundred objects frozen already (375 seen on 3.12.1): count
    # what pre_fork added.
    added = frozen - before
    assert added > 1000 and added > tracked // 2  # what the master had loaded (less its garbage)
    assert after < 100  # nothing left for a worker's collections to walk
