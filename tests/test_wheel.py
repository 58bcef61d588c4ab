"""The wheel a user installs (`pip install .`, `pipx install`): built from this checkout,
installed into a fresh virtualenv outside it, run from a directory outside it. A module or
data file missing from the wheel fails here, which `make test`'s editable install never sees.

Offline and quick (~5 s before the demo): the wheel is built without build isolation (the
dev venv's setuptools), installed with `--no-deps`, and the fresh venv reaches the already
installed third-party packages through a `.pth` line naming the dev venv's site-packages. A
path in a .pth is only appended to sys.path (the .pth files inside it are not run), so the dev
venv's editable hook for this checkout stays off, and the wheel's own copy comes first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from phh_engine import __version__
from phh_engine.runners.codex_cli import PINNED_CODEX_VERSION

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("phh_engine", "phh_tui")
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    outside: Path  # a directory outside the checkout to run from

    @property
    def phh(self) -> str:
        return str(self.venv / "bin" / "phh")

    def run(self, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.phh, *argv], cwd=self.outside, env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PHH_ROOT", "PHH_CODEX_CONFIG", "VIRTUAL_ENV")}
        env.update(extra)
        return env


def _source_files(base: Path) -> set[str]:
    return {p.relative_to(base).as_posix() for pkg in PACKAGES
            for p in (base / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, codex_bin: str) -> Installed:
    base = tmp_path_factory.mktemp("wheel").resolve()
    # Build from a copy: pip builds in the source tree and leaves build/lib behind, whose
    # stale files (a module since deleted) would ride along in later wheels.
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=_CACHES)
    dist = base / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(src), "-w", str(dist)], check=True, capture_output=True, timeout=180)
    (wheel,) = dist.glob("phh-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True,
                   timeout=180)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_phh_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = base / "elsewhere"
    outside.mkdir()
    return Installed(wheel, venv, outside)


def test_wheel_holds_every_module_and_data_file(installed: Installed) -> None:
    """Every file of the two packages (subpackages, schemas, demo batch, .tcss) ships."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = sorted(_source_files(REPO) - names)
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    assert "phh_engine/models/__init__.py" in names  # the subpackage issue 16 found missing
    layers = ("models", "store", "derive", "runners", "interfaces", "engine")
    assert {f"phh_engine/{layer}/__init__.py" for layer in layers} <= names
    assert {"phh_engine/data/run_report.schema.json", "phh_tui/app.tcss",
            "phh_tui/data/demo.json"} <= names


def test_installed_phh_runs_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    py = str(installed.venv / "bin" / "python")
    out = subprocess.run(
        [py, "-c", "import importlib.metadata as m, phh_engine, phh_tui.app;"
         "print(phh_engine.__file__); print(m.version('phh'))"],
        cwd=installed.outside, env=installed.env(), capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 0, out.stderr
    where, version = out.stdout.split()
    assert Path(where).is_relative_to(installed.venv), where
    assert version == __version__  # single-sourced: the wheel's metadata is phh_engine's


def test_installed_version_help_and_demo(installed: Installed, codex_bin: str,
                                         tmp_path: Path) -> None:
    env = installed.env(PHH_CODEX_BIN=codex_bin)
    ver = installed.run("--version", env=env)
    assert ver.returncode == 0, ver.stderr
    assert f"phh {__version__}" in ver.stdout
    assert f"codex {PINNED_CODEX_VERSION} at {Path(codex_bin).resolve()}" in ver.stdout

    hlp = installed.run("--help", env=env)
    assert hlp.returncode == 0, hlp.stderr
    for command in ("run", "doctor", "demo", "submit"):
        assert command in hlp.stdout

    root = tmp_path.resolve() / "demo"
    demo = installed.run("--root", str(root), "demo", "--no-ui", env=env)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr, demo.stderr[-3000:]
    assert "finished batch_" in demo.stdout, demo.stdout[-3000:]
    board = installed.run("--root", str(root), "scoreboard", "--json", env=env)
    assert board.returncode == 0, board.stderr
    totals = json.loads(board.stdout)
    assert totals["batches"] and totals["batches"][0]["counts"]["succeeded"] > 0, totals


def test_installed_without_codex_says_how_to_install_it(installed: Installed,
                                                        tmp_path: Path) -> None:
    """Nothing on PATH and no pinned install beside an installed phh: every command that
    needs Codex exits 2 with one sentence, never a traceback."""
    # a provider that needs no credential: the missing binary is the one problem left
    cfg = tmp_path / "codex.toml"
    cfg.write_text('model_provider = "local"\n[model_providers.local]\n'
                   'base_url = "http://127.0.0.1:9/v1"\nwire_api = "responses"\n')
    env = installed.env(PATH="/usr/bin:/bin", PHH_CODEX_CONFIG=str(cfg))
    env.pop("PHH_CODEX_BIN", None)
    assert shutil.which("codex", path=env["PATH"]) is None
    root = tmp_path.resolve() / "root"
    assert installed.run("--root", str(root), "init", env=env).returncode == 0
    hint = f"npm install -g @openai/codex@{PINNED_CODEX_VERSION}"
    for argv in (("run", "--no-ui", "--until-idle"), ("demo", "--no-ui"), ()):
        res = installed.run("--root", str(root), *argv, env=env)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert hint in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    ver = installed.run("--version", env=env)
    assert ver.returncode == 0 and "codex: not found" in ver.stdout and hint in ver.stdout
    doc = installed.run("--root", str(root), "doctor", "--json", env=env)
    assert doc.returncode == 1
    rows = {r["name"]: r for r in json.loads(doc.stdout)["checks"]}
    assert rows["codex binary"]["status"] == "fail" and hint in rows["codex binary"]["fix"]


def test_pinned_codex_version_matches_package_json() -> None:
    pin = json.loads((REPO / "package.json").read_text())["dependencies"]["@openai/codex"]
    assert pin == PINNED_CODEX_VERSION
