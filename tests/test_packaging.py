"""`pip install .` gives a working `sluice` command; the lock files pin every requirement with hashes."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server import __version__
from tests.support.processes import ROOT, ManagedProcess, clean_env, free_port

BUILD_IGNORES = (".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
INSTALL_SECONDS = 180  # a wheel build, on a loaded machine


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with Sluice installed from this tree; its dependencies are the test venv's."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # The dependencies are installed and hash-checked already: reuse them instead of downloading.
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (purelib / "shared-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # Built from a copy: setuptools reuses build/ in the tree it builds, so a stale copy of a file
    # the package no longer declares would still be installed, and the clone would get a build/.
    source = venv.parent / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*BUILD_IGNORES))
    # Without build isolation: built by the setuptools the test venv has (requirements-dev.lock, seen
    # through the .pth above), so the suite needs no package index once it is set up.
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *install],
        check=True,
        timeout=INSTALL_SECONDS,
        env=clean_env(),
        cwd=venv.parent,
    )
    return venv


def test_installed_sluice_reports_its_version(installed: Path) -> None:
    result = subprocess.run(
        [installed / "bin" / "sluice", "--version"], capture_output=True, text=True, check=True, cwd=installed
    )
    assert result.stdout.strip() == f"sluice {__version__}"


def test_installed_sluice_help_offers_the_same_options_as_run_py(installed: Path) -> None:
    def options(argv: list[str | Path]) -> set[str]:
        text = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=installed).stdout
        return set(re.findall(r"--[a-z-]+", text))

    installed_options = options([installed / "bin" / "sluice", "--help"])
    assert installed_options == options([sys.executable, ROOT / "run.py", "--help"])
    assert {"--host", "--port", "--config", "--workers", "--log-format", "--version"} <= installed_options


def test_installed_sluice_runs_from_the_installed_package_not_the_clone(installed: Path) -> None:
    result = subprocess.run(
        [installed / "bin" / "python", "-c", "import server.settings as s; print(s.__file__, s.DEFAULT_CONFIG)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed,
    )
    module, config = result.stdout.split()
    assert Path(module).is_relative_to(installed)
    assert Path(config).is_relative_to(installed)
    assert Path(config).is_file()


async def test_installed_sluice_serves_a_chat_with_its_packaged_defaults(installed: Path) -> None:
    port = free_port()
    # No --config: the defaults come from inside the installed package.
    process = ManagedProcess([str(installed / "bin" / "sluice"), "--port", str(port)], clean_env()).start()
    try:
        listening = process.wait_for_event("sluice_listening")
        assert listening["integration"] == "simulated"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/chat", json={"message": "installed?"}) as response:
                assert response.status == 200
                assert (await response.json())["response"]
            async with http.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 200  # the demo page is packaged too
    finally:
        process.stop()


def pins(path: Path) -> dict[str, str]:
    """`name: version` for every `name==version` line of a requirements or lock file."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


@pytest.mark.parametrize(
    ("requirements", "lock"),
    [("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock")],
)
def test_lock_pins_every_requirement_at_its_version(requirements: str, lock: str) -> None:
    wanted = pins(ROOT / requirements)
    if requirements == "requirements-dev.txt":
        wanted |= pins(ROOT / "requirements.txt")
    locked = pins(ROOT / lock)
    stale = {name: version for name, version in wanted.items() if locked.get(name) != version}
    assert not stale, f"{lock} is stale for {stale}: run .ci/lock"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_package_carries_a_hash(lock: str) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    packages = [entry for entry in entries if re.match(r"[A-Za-z0-9]", entry)]
    assert packages
    assert all("--hash=sha256:" in entry for entry in packages)


# Every Python the package declares (requires-python >= 3.11) at the releases that decide a
# dependency's marker: redis-py needs async-timeout before 3.11.3, and Debian 12 ships 3.11.2.
SUPPORTED_PYTHONS = ("3.11.0", "3.11.2", "3.11.3", "3.12.0", "3.13.0")


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
@pytest.mark.parametrize("python", SUPPORTED_PYTHONS)
def test_the_lock_holds_every_dependency_its_packages_need_on_each_supported_python(lock: str, python: str) -> None:
    # pip-compile writes what the Python it ran on needs; `--require-hashes` then refuses to install
    # anything the lock lacks on another one (the first command failed on Debian 12's Python).
    environment: dict[str, Any] = {
        **default_environment(),
        "python_version": python.rsplit(".", 1)[0],
        "python_full_version": python,
        "extra": "",
    }
    locked = pins(ROOT / lock)
    missing = set()
    for name in locked:
        for text in importlib.metadata.requires(name) or ():
            needed = Requirement(text)
            applies = needed.marker is None or needed.marker.evaluate(environment)
            if applies and canonicalize_name(needed.name) not in locked:
                missing.add(f"{needed} (for {name})")
    assert not missing, f"{lock} lacks on Python {python}: {sorted(missing)}; add them to the requirements"


def test_tests_run_installs_from_the_hashed_lock() -> None:
    script = (ROOT / "tests" / "run").read_text()
    assert "--require-hashes -r requirements-dev.lock" in script


def start_tests_run(tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tests/run` as a user who is not root, with only the shell's basics and `tools` (name: script) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dirname", "cat"):
        found = shutil.which(name)
        assert found is not None
        (bin_dir / name).symlink_to(found)
    # python3: where .venv is not made yet, `import ensurepip` is how tests/run asks for python3-venv.
    for name, script in {"id": "echo 1000", "python3": "exit 0", **tools}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    argv = ["/bin/bash", str(ROOT / "tests" / "run")]
    return subprocess.run(argv, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60, check=False)


def test_tests_run_names_what_is_missing_in_one_line_when_it_cannot_install_it(tmp_path: Path) -> None:
    done = start_tests_run(tmp_path, {})  # no npm, no node

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tests/run: missing; install them with: sudo apt-get install -y --no-install-recommends nodejs npm"
    ]


def test_tests_run_refuses_a_node_older_than_the_sdk_needs(tmp_path: Path) -> None:
    done = start_tests_run(tmp_path, {"npm": "exit 0", "node": "echo 18"})

    assert done.returncode == 1
    assert "needs Node.js 20 or later (found 18)" in done.stderr
