"""A CDS Hooks JWT is accepted once, whichever worker or pod it reaches (issue 14, point 6).

The `jti` store is SQLite shared by the workers of a pod (the default under gunicorn) or Redis
shared by every pod (CDS_HOOKS_REPLAY_REDIS_URL). Checked with the stores alone (many processes
racing on one key), then through real gunicorn with 3 workers, then through two gunicorn
instances sharing a real redis-server.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import ops_support
import pytest
import requests
from test_hooks_auth import EC_KEY, ISS_EC, REQUEST, SERVICE, public_jwk, token

from service.ehr.hooks_auth import AuthenticationFailed, Authenticator, load_issuers
from service.ehr.replay_store import RedisReplayStore, ReplayStoreError, SqliteReplayStore

SENDS = 20
PUBLIC = "https://cds.example.org"  # CDS_HOOKS_BASE_URL: the audience every instance checks


def _race(path: str, start: float, out: multiprocessing.Queue) -> None:
    store = SqliteReplayStore(path)
    while time.time() < start:
        time.sleep(0.001)
    out.put(store.add("https://ehr.example.org", "the-one-jti", time.time() + 300, time.time()))
    store.close()


def test_sqlite_store_many_processes_racing_on_one_jti_one_wins(tmp_path):
    path = str(tmp_path / "jti.sqlite3")
    SqliteReplayStore(path).close()  # creates the file; closed, or Python 3.13 warns when it is collected
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(path, start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(results) == [False] * 7 + [True]


def test_sqlite_store_forgets_expired_entries(tmp_path):
    store = SqliteReplayStore(str(tmp_path / "jti.sqlite3"))
    try:
        assert store.add("iss", "a", exp=100.0, now=50.0)
        assert not store.add("iss", "a", exp=100.0, now=60.0)
        assert store.add("iss", "a", exp=300.0, now=200.0)  # the first entry expired at 100
        assert store.add("other-iss", "a", exp=300.0, now=200.0)  # per issuer
    finally:
        store.close()


def test_an_unreachable_store_refuses_the_token(tmp_path):
    """Fail closed: with no answer from the store, a replay could not be told apart."""
    dead = RedisReplayStore(f"redis://127.0.0.1:{ops_support.free_port()}/0", timeout=0.5)
    with pytest.raises(ReplayStoreError):
        dead.add("iss", "jti", time.time() + 60, time.time())
    auth = Authenticator(load_issuers({ISS_EC: {"keys": [public_jwk(EC_KEY, "ec-1", "ES384")]}}), replay_store=dead)
    with pytest.raises(AuthenticationFailed, match="replay store unavailable"):
        auth.verify("Bearer " + token(aud="http://localhost" + SERVICE), ["http://localhost" + SERVICE])


def test_an_unusable_sqlite_path_stops_the_service_naming_the_variable(tmp_path):
    from service import create_app
    from service.ehr.replay_store import ReplayStoreConfigError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ReplayStoreConfigError, match="CDS_HOOKS_REPLAY_DB"):
        create_app({"TESTING": True, "HOOKS_REPLAY_DB": str(blocker / "jti.sqlite3"), "HOOKS_BASE_URL": PUBLIC,
                    "HOOKS_TRUSTED_ISSUERS": json.dumps({ISS_EC: {"keys": [public_jwk(EC_KEY, "ec-1", "ES384")]}})})


# --- through real gunicorn -------------------------------------------------------------------


def _hooks_env(**extra: str) -> dict[str, str]:
    return {"CDS_ACCESS_LOG": "off", "CDS_HOOKS_BASE_URL": PUBLIC,
            "CDS_HOOKS_TRUSTED_ISSUERS": json.dumps({ISS_EC: {"keys": [public_jwk(EC_KEY, "ec-1", "ES384")]}}),
            **extra}


def _send_many(urls: list[str], bearer: str) -> list[int]:
    """SENDS concurrent calls with one token, each on its own connection, spread over `urls`."""
    def call(i: int) -> int:
        r = requests.post(urls[i % len(urls)] + SERVICE, json=REQUEST, timeout=20,
                          headers={"Authorization": f"Bearer {bearer}", "Connection": "close"})
        return r.status_code

    with ThreadPoolExecutor(max_workers=SENDS) as pool:
        return list(pool.map(call, range(SENDS)))


def _one_token() -> str:
    return jwt.encode({"iss": ISS_EC, "aud": PUBLIC + SERVICE, "exp": int(time.time()) + 300,
                       "iat": int(time.time()), "jti": str(uuid.uuid4())},
                      EC_KEY, algorithm="ES384", headers={"kid": "ec-1", "typ": "JWT"})


@pytest.mark.slow
def test_one_token_sent_20_times_to_3_workers_is_accepted_once(tmp_path):
    # Sync workers take one connection each at a time, so 20 concurrent calls are sure to reach
    # several of them (a gthread worker may accept all 20 ahead of its threads).
    with ops_support.gunicorn(tmp_path, CDS_WORKERS="3", CDS_WORKER_CLASS="sync", **_hooks_env()) as server:
        statuses = _send_many([server.url], _one_token())
        time.sleep(0.3)
        pids = {line["pid"] for line in server.json_lines()
                if line.get("event") == "request" and line.get("route") == SERVICE}
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == SENDS - 1, statuses
    assert len(pids) >= 2, f"the calls all reached one worker ({pids}): the test proves nothing"


@pytest.fixture()
def redis_url(tmp_path):
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                               else None)
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/setup-system.sh installs it as root with apt-get)")
    port = ops_support.free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not ops_support.port_answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        ops_support.stop(proc, timeout=10)


@pytest.mark.slow
def test_with_redis_two_gunicorn_instances_accept_one_token_once(tmp_path, redis_url):
    env = _hooks_env(CDS_HOOKS_REPLAY_REDIS_URL=redis_url)
    with ops_support.gunicorn(tmp_path / "a", **env) as a, ops_support.gunicorn(tmp_path / "b", **env) as b:
        statuses = _send_many([a.url, b.url], _one_token())
        # A second, fresh token is accepted: the store refuses replays, not tokens.
        fresh = requests.post(b.url + SERVICE, json=REQUEST, timeout=20,
                              headers={"Authorization": f"Bearer {_one_token()}"})
    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == SENDS - 1, statuses
    assert fresh.status_code == 200
