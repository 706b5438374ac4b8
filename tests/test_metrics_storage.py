"""A full metrics volume never takes an evaluation down, and dead workers' metric files are
merged, not left behind (issue 14, point 3).

prometheus_client mmaps sparse files; on a full tmpfs the first write to such a page killed the
worker with SIGBUS. The files are now preallocated (service/ops/metrics_files.py): a full volume is an
OSError, the worker counts in memory, the error is logged and counted. The real test mounts a
small tmpfs (root only; skipped otherwise), fills it, and makes gunicorn start a worker on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import ops_support
import pytest
import requests
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.mmap_dict import MmapedDict

from service.ops import metrics_files
from service.ops.metrics_files import PreallocatedMmapedDict, archive_dead, prepare_directory

# --- the pieces, without gunicorn -------------------------------------------------------------


def _counter_file(path: Path, pid: int | str, samples: dict[str, float]) -> None:
    d = PreallocatedMmapedDict(str(path / f"counter_{pid}.db"))
    for name, value in samples.items():
        key = f'["c", "c_total", {{"k": "{name}"}}, "help"]'
        d.write_value(key, value, 0.0)
    d.close()


def _totals(path: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(path))
    return {f"{s.labels.get('k')}": s.value for m in registry.collect() for s in m.samples}


def test_dead_processes_are_merged_into_the_archive_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    prepare_directory(str(tmp_path))
    _counter_file(tmp_path, 101, {"a": 3, "b": 1})
    _counter_file(tmp_path, 102, {"a": 4})
    _counter_file(tmp_path, 103, {"b": 10})
    before = _totals(tmp_path)
    assert archive_dead(str(tmp_path), live_pids={103}) == 2
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_103.db", "counter_archive.db"]
    assert _totals(tmp_path) == before == {"a": 7.0, "b": 11.0}
    _counter_file(tmp_path, 104, {"a": 1})  # a later worker dies too: added to the archive
    assert archive_dead(str(tmp_path), live_pids={103}) == 1
    assert _totals(tmp_path) == {"a": 8.0, "b": 11.0}


def test_a_full_volume_is_an_oserror_then_memory_and_a_counted_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    prepare_directory(str(tmp_path))

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    d = PreallocatedMmapedDict(str(tmp_path / "counter_7.db"))
    for i in range(5000):  # far past the first 64 KiB: growth in memory too
        d.write_value(f"key-{i}", float(i), 0.0)
    assert d.read_value("key-4999") == (4999.0, 0.0)
    d.close()
    assert not (tmp_path / "counter_7.db").exists()  # no empty file for scrapes to choke on
    assert metrics_files.storage_errors() == 1
    assert "ENOSPC" in caplog.text


def test_growth_that_finds_the_volume_full_keeps_the_file_and_goes_on_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    prepare_directory(str(tmp_path))
    path = tmp_path / "counter_8.db"
    d = PreallocatedMmapedDict(str(path))
    d.write_value("first", 5.0, 0.0)
    monkeypatch.setattr(os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    for i in range(5000):  # past the first 64 KiB: the file would have to grow
        d.write_value(f"key-{i}", 1.0, 0.0)
    d.write_value("first", 6.0, 0.0)
    assert d.read_value("first") == (6.0, 0.0)
    d.close()
    on_disk = {k: v for k, v, *_ in MmapedDict.read_all_values_from_file(str(path))}
    assert on_disk["first"] == 5.0  # frozen, readable, never backwards
    assert metrics_files.storage_errors() == 1


# --- real gunicorn on a real full tmpfs ---------------------------------------------------------


@pytest.fixture()
def small_tmpfs(tmp_path):
    mount = tmp_path / "metrics-volume"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount): {exc.__class__.__name__}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=10)


def _fill(volume: Path) -> Path:
    filler = volume / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def _workers(master: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    pids.add(int(entry.name))
    return pids


def _wait_for_new_worker(master: int, old: set[int], count: int) -> set[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _workers(master)
        if len(now) == count and now != old and not (now - old) <= set():
            return now
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not replace the worker: {old} -> {_workers(master)}")


def _evaluations_total(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("legpain_cds_evaluations_total{"))


@pytest.mark.slow
def test_a_full_metrics_volume_never_takes_an_evaluation_down(small_tmpfs, knowledge):
    metrics_dir = small_tmpfs / "metrics"
    body = {"patient": {"age": 58, "sex": "female"}, "findings": [{"code": "calf_swelling_3cm"}]}
    with ops_support.gunicorn(small_tmpfs.parent / "gunicorn", CDS_ACCESS_LOG="off",
                              PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as server:
        master = server.proc.pid
        with requests.Session() as http:
            for _ in range(10):
                assert http.post(server.url + "/v1/evaluations", json=body, timeout=10).status_code == 200
        counted_before = _evaluations_total(server.url)
        assert counted_before >= 10

        filler = _fill(small_tmpfs)
        assert os.statvfs(small_tmpfs).f_bavail == 0
        workers = _workers(master)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)  # its replacement has to create its files on the full volume
        workers = _wait_for_new_worker(master, workers, 2)

        statuses = []
        for _ in range(40):
            r = requests.post(server.url + "/v1/evaluations", json=body, timeout=10, headers={"Connection": "close"})
            statuses.append(r.status_code)
        assert statuses == [200] * 40
        # With the server's output but the per-request lines, so that a rare failure (seen once in
        # CI on 30 November 2026, not reproduced) says how the worker died.
        assert _workers(master) == workers, "a worker died while the volume was full:\n" + "\n".join(
            line for line in server.output().splitlines()
            if '"logger":"service.request"' not in line and '"event":"evaluation"' not in line)
        metrics = requests.get(server.url + "/metrics", timeout=10)
        assert metrics.status_code == 200
        errors = [line for line in metrics.text.splitlines() if line.startswith("legpain_cds_metrics_storage_errors_")]
        assert errors and float(errors[0].split()[-1]) >= 1, errors
        assert _evaluations_total(server.url) >= counted_before  # never backwards

        # Room again: the dead workers' files are merged into the archive and removed.
        filler.unlink()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
            workers = _wait_for_new_worker(master, workers, 2)
        for _ in range(5):
            assert requests.post(server.url + "/v1/evaluations", json=body, timeout=10).status_code == 200
        files = sorted(p.name for p in metrics_dir.glob("*.db"))
        live = {str(pid) for pid in _workers(master)} | {str(master)}
        leftovers = [f for f in files if f.rsplit("_", 1)[-1][:-3] not in live | {"archive"}]
        assert leftovers == [], files
        assert "counter_archive.db" in files
        assert _evaluations_total(server.url) >= counted_before + 5
        log = server.output()
    assert "SIGBUS" not in log and "was sent" not in log.replace("was sent SIGKILL", "")
    assert "metrics storage failed (ENOSPC)" in log
