"""The set-up scripts, run as bash runs them: the system-package scripts never stop the test
run (no apt-get, or apt-get failing, is reported), and setup.sh checks up front and stays quiet
when nothing changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPTS = ROOT / "scripts"


def bin_dir(tmp_path: Path, *, apt_get_exit: int | None) -> Path:
    """A PATH of only what the scripts need, with an apt-get that fails (or none at all)."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in ("id", "cat", "sha256sum", "cut"):
        found = shutil.which(tool)
        assert found, tool
        (d / tool).symlink_to(found)
    if apt_get_exit is not None:
        fake = d / "apt-get"
        fake.write_text(f"#!/bin/bash\necho 'E: could not reach the mirror' >&2\nexit {apt_get_exit}\n")
        fake.chmod(0o755)
    return d


def run_script(name: str, path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPTS / name)], env={"PATH": str(path), "HOME": "/tmp", **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the install path runs only as root")


@pytest.mark.parametrize(("script", "extra"), [
    ("setup-browser.sh", {"CDS_CHROMIUM": "/nonexistent/chromium"}),
    ("setup-system.sh", {}),
])
def test_without_apt_get_it_says_what_is_missing_and_does_not_fail(tmp_path, script, extra):
    proc = run_script(script, bin_dir(tmp_path, apt_get_exit=None), **extra)
    assert proc.returncode == 0, proc.stderr
    assert "missing" in proc.stderr and "apt-get install --no-install-recommends" in proc.stderr
    assert "skipped" in proc.stderr


@needs_root
@pytest.mark.parametrize(("script", "extra", "package"), [
    ("setup-browser.sh", {"CDS_CHROMIUM": "/nonexistent/chromium"}, "chromium"),
    ("setup-system.sh", {}, "prometheus"),
])
def test_a_failing_apt_get_is_reported_and_does_not_fail(tmp_path, script, extra, package):
    proc = run_script(script, bin_dir(tmp_path, apt_get_exit=100), **extra)
    assert proc.returncode == 0, proc.stderr
    assert f"installing {package}" in proc.stderr  # says what it installs
    assert f"apt-get could not install {package}" in proc.stderr and "skipped" in proc.stderr


def setup(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPTS / "setup.sh"), "test"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_setup_names_a_missing_interpreter():
    proc = setup(PYTHON="/nonexistent/python3", VENV="/nonexistent/venv")
    assert proc.returncode == 1 and "PYTHON" in proc.stderr and "3.11, 3.12 or 3.13" in proc.stderr


def test_setup_checks_for_a_c_compiler_before_building_durable_rules(tmp_path):
    proc = setup(PYTHON=sys.executable, VENV=str(tmp_path / "venv"), CC="/nonexistent/cc")
    assert proc.returncode == 1
    assert "no C compiler found; durable-rules is built from source" in proc.stderr
    assert not (tmp_path / "venv").exists()  # checked before anything was created


def test_setup_checks_for_the_python_headers(tmp_path):
    fake_cc = tmp_path / "cc-without-headers"
    fake_cc.write_text("#!/bin/bash\nexit 1\n")  # a compiler that cannot find Python.h
    fake_cc.chmod(0o755)
    proc = setup(PYTHON=sys.executable, VENV=str(tmp_path / "venv"), CC=str(fake_cc))
    assert proc.returncode == 1 and "the Python headers (Python.h)" in proc.stderr


def test_a_second_setup_with_nothing_changed_runs_no_pip_and_prints_nothing():
    venv = Path(sys.prefix)
    if not (venv / ".setup-test").is_file():
        pytest.skip("this interpreter's venv was not made by scripts/setup.sh")
    start = time.monotonic()
    proc = setup(PYTHON=sys.executable, VENV=str(venv))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    assert time.monotonic() - start < 5


def test_a_venv_of_another_python_is_named_not_reused():
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyenv = Path(os.path.expanduser("~/.pyenv/versions"))
    others = [p for v in ("3.11", "3.12", "3.13") if v != mine
              for p in [shutil.which(f"python{v}"), *pyenv.glob(f"{v}*/bin/python{v}")]
              if p and subprocess.run([str(p), "-c", ""], capture_output=True).returncode == 0]
    if not others:
        pytest.skip(f"no Python but {mine} on this machine")
    proc = setup(PYTHON=str(others[0]), VENV=sys.prefix)
    assert proc.returncode == 1
    assert f"holds Python {mine}" in proc.stderr and "remove" in proc.stderr and "VENV=.venv-" in proc.stderr
