"""prometheus_client's multiprocess files, made safe on a full volume and tidied after workers die.

**Why.** Each worker keeps its samples in files it mmaps (`counter_<pid>.db`, ...). prometheus_client
creates and grows them with `truncate`, which makes a *sparse* file: no block is reserved. On a full
tmpfs the first write to such a page cannot be backed, and the kernel kills the worker with SIGBUS:
no Python exception, no request answered. Issue 14 saw 345 workers die in 20 s that way.

**What this does.**
1. Every file is preallocated with `posix_fallocate` when it is created or grown, so a full volume
   fails there, as an `OSError` in Python. Then that worker keeps counting in memory (its samples
   are missing from /metrics, not its answers from clinicians): the error is logged once per file
   and counted in `legpain_cds_metrics_storage_errors_total`, which lives in a small file that
   gunicorn's master preallocates at start, so it can be counted even when the volume is full.
2. When a worker dies, gunicorn's master (`child_exit`) merges its counter and histogram files into
   one archive file per type and removes them. Counters therefore never go backwards, and restarts
   do not fill the volume (prometheus_client's own `mark_process_dead` only removes live gauges).
   Merging and scraping take a lock file so a scrape never sees a sample twice or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import mmap
import os
import struct
from collections.abc import Iterable, Iterator

from prometheus_client import values as _values
from prometheus_client.mmap_dict import _INITIAL_MMAP_SIZE, MmapedDict, _pack_integer

log = logging.getLogger("service.metrics")

ADDITIVE_TYPES = ("counter", "histogram", "summary")  # samples of a dead process can be summed
ARCHIVE_PID = "archive"  # counter_archive.db: prometheus_client reads the type from the name's start
LOCK_NAME = "metrics.lock"
TALLY_NAME = "metrics-storage-errors.bin"  # not *.db: prometheus_client reads every *.db
_TALLY = struct.Struct("<Q")


# --- the storage-error tally ---------------------------------------------------------------


def _tally_path() -> str | None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return os.path.join(path, TALLY_NAME) if path else None


_local_errors = 0  # this process's count, for single-process mode and when the tally is missing


def storage_errors() -> int:
    """Storage errors counted by every process of this gunicorn (or by this process alone)."""
    path = _tally_path()
    if path:
        try:
            with open(path, "rb") as f:
                return _TALLY.unpack(f.read(_TALLY.size))[0]
        except (OSError, struct.error):
            pass
    return _local_errors


def _count_storage_error() -> None:
    global _local_errors
    _local_errors += 1
    path = _tally_path()
    if not path:
        return
    try:
        # The file's blocks were allocated at start: rewriting them needs no free space.
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, _TALLY.size, 0)
        count = _TALLY.unpack(raw)[0] if len(raw) == _TALLY.size else 0
        os.pwrite(fd, _TALLY.pack(count + 1), 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _storage_failed(filename: str, exc: OSError) -> None:
    name = errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)
    log.error("metrics storage failed (%s) for %s: this worker keeps counting in memory and its samples are "
              "missing from /metrics; free space on PROMETHEUS_MULTIPROC_DIR", name, os.path.basename(filename))
    _count_storage_error()


# --- preallocated files ----------------------------------------------------------------------


class PreallocatedMmapedDict(MmapedDict):
    """prometheus_client's MmapedDict whose file blocks are reserved before they are mapped, and
    which falls back to memory when they cannot be."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if read_mode:
            super().__init__(filename, read_mode=True)
            return
        created = not os.path.exists(filename)
        try:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                # Also fills the holes of a sparse file left by an older process.
                os.posix_fallocate(fd, 0, max(size, _INITIAL_MMAP_SIZE))
            finally:
                os.close(fd)
            super().__init__(filename)
        except OSError as exc:
            if created:  # an empty or partial file would break every scrape
                with contextlib.suppress(OSError):
                    os.remove(filename)
            _storage_failed(filename, exc)
            self._in_memory(filename, bytearray(_INITIAL_MMAP_SIZE), used=8)

    def _in_memory(self, filename: str, data: bytearray, used: int) -> None:
        """Carry on with the same layout in a bytearray: values are kept, never written out."""
        self._f = None
        self._fname = filename
        self._m = data  # type: ignore[assignment]
        self._capacity = len(data)
        self._used = used
        _pack_integer(self._m, 0, self._used)
        if not hasattr(self, "_positions"):
            self._positions = {}

    def _init_value(self, key: str) -> None:
        encoded = key.encode("utf-8")
        needed = 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16
        if self._used + needed > self._capacity:
            capacity = self._capacity
            while self._used + needed > capacity:
                capacity *= 2
            self._grow(capacity)
        super()._init_value(key)  # fits now: it writes without growing

    def _grow(self, capacity: int) -> None:
        if self._f is None:  # already in memory
            self._m.extend(bytes(capacity - self._capacity))  # type: ignore[union-attr]
            self._capacity = capacity
            return
        try:
            os.posix_fallocate(self._f.fileno(), 0, capacity)
            self._m.close()
            self._m = mmap.mmap(self._f.fileno(), capacity)
            self._capacity = capacity
        except OSError as exc:
            # The file keeps what it has (a scrape still reads it, frozen); new values go to memory.
            _storage_failed(self._fname, exc)
            data = bytearray(self._m[: self._capacity]) + bytearray(capacity - self._capacity)
            self._m.close()
            self._f.close()
            self._in_memory(self._fname, data, self._used)


def install() -> None:
    """Make prometheus_client create its multiprocess files through PreallocatedMmapedDict.
    Call before the first metric is created (service/ops/metrics.py does, at import)."""
    _values.MmapedDict = PreallocatedMmapedDict  # type: ignore[attr-defined, misc]


# --- the directory: start, scrape, dead workers ----------------------------------------------


def prepare_directory(path: str) -> None:
    """At gunicorn start (on_starting): empty the directory of a previous run's samples, and
    preallocate the storage-error tally and the lock file while there is room."""
    os.makedirs(path, exist_ok=True)
    for pattern in ("*.db", "*.db.tmp"):
        for f in glob.glob(os.path.join(path, pattern)):
            os.remove(f)
    try:
        with open(os.path.join(path, TALLY_NAME), "wb") as f:
            f.write(_TALLY.pack(0))
            f.flush()
            os.fsync(f.fileno())
        open(os.path.join(path, LOCK_NAME), "ab").close()
    except OSError as exc:
        log.error("metrics directory not prepared (%s): storage errors are counted per process only",
                  errno.errorcode.get(exc.errno or 0, exc.__class__.__name__))


@contextlib.contextmanager
def locked(path: str, exclusive: bool) -> Iterator[None]:
    """Scrapes share the lock, merges take it alone. Without the lock file (it could not be
    created), go on unlocked rather than fail."""
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_of(filename: str) -> int | None:
    stem = os.path.basename(filename)[: -len(".db")]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _read(filename: str) -> Iterable[tuple[str, float]]:
    try:
        return [(k, v) for k, v, *_ in MmapedDict.read_all_values_from_file(filename)]
    except (struct.error, RuntimeError, UnicodeDecodeError):  # empty or damaged: nothing to keep
        log.error("metrics file unreadable, dropped: %s", os.path.basename(filename))
        return []


def _write_archive(target: str, samples: dict[str, float]) -> None:
    """Write `samples` to a preallocated temporary file, then rename it over `target`."""
    tmp = target + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    size = 8 + sum(4 + len(k.encode()) + (8 - (len(k.encode()) + 4) % 8) + 16 for k in samples)
    capacity = _INITIAL_MMAP_SIZE
    while capacity < size:
        capacity *= 2
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.posix_fallocate(fd, 0, capacity)
        finally:
            os.close(fd)
        archive = MmapedDict(tmp)
        try:
            for key, value in samples.items():
                archive.write_value(key, value, 0.0)
        finally:
            archive.close()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def archive_dead(path: str, live_pids: Iterable[int]) -> int:
    """Merge the counter / histogram / summary files of every process not in `live_pids` into
    `<type>_archive.db` and remove them; remove their live gauges. Returns the files merged.
    On failure (no room for the archive) the dead files stay, so nothing is lost, and the next
    call tries again."""
    live = set(live_pids)
    merged = 0
    with locked(path, exclusive=True):
        for typ in ADDITIVE_TYPES:
            dead = [f for f in glob.glob(os.path.join(path, f"{typ}_*.db"))
                    if (pid := _pid_of(f)) is not None and pid not in live]
            if not dead:
                continue
            target = os.path.join(path, f"{typ}_{ARCHIVE_PID}.db")
            totals: dict[str, float] = {}
            for f in ([target] if os.path.exists(target) else []) + dead:
                for key, value in _read(f):
                    totals[key] = totals.get(key, 0.0) + value
            try:
                _write_archive(target, totals)
            except OSError as exc:
                log.error("dead workers' %s metrics not merged (%s); kept for the next try", typ,
                          errno.errorcode.get(exc.errno or 0, exc.__class__.__name__))
                continue
            for f in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)
            merged += len(dead)
        from prometheus_client import multiprocess

        for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
            pid = _pid_of(f)
            if pid is not None and pid not in live:
                multiprocess.mark_process_dead(pid, path)
    return merged
