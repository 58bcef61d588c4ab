"""`phh demo`: a bundled batch against the offline model stand-in, no API key needed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from phh_engine.engine.loop import Engine
from phh_engine.interfaces.submit import submit
from phh_engine.models import HarnessSettings
from phh_engine.standin import StandIn
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import materialize
from phh_engine.store.paths import Layout

DEMO_BATCH = Path(__file__).parent / "data" / "demo.json"


def prepare_demo_root(root: Path, standin: StandIn) -> str:
    """A fresh root whose Codex config points at the stand-in; returns the batch id."""
    layout = Layout(root)
    (root / "workspace").mkdir(parents=True, exist_ok=True)
    (root / "workspace" / "README.md").write_text("A tiny project for the demo agents.\n")
    _git_init(root / "workspace")
    cfg_toml = standin.write_config(root / "codex_config.toml")
    settings = HarnessSettings()
    settings.codex.config_toml = str(cfg_toml)
    settings.runners[0].capacity = 6
    settings.limits.global_concurrency = 6
    atomic_write_json(layout.settings_path, settings.model_dump(mode="json", exclude_none=True))
    materialize(layout, settings)
    table = root / "demo.json"
    shutil.copyfile(DEMO_BATCH, table)
    return submit(layout, table).batch_id


def _git_init(workspace: Path) -> None:
    """A git workspace, so each attempt's git diff shows what its agent changed."""
    git = shutil.which("git")
    if git is None:
        return
    ident = ["-c", "user.name=phh demo", "-c", "user.email=demo@phh.invalid",
             "-c", "commit.gpgsign=false"]
    for argv in (["init", "-q"], ["add", "README.md"], [*ident, "commit", "-q", "-m", "demo"]):
        if subprocess.run([git, "-C", str(workspace), *argv], capture_output=True).returncode:
            return


def run_demo(root: Path | None = None, no_ui: bool = False) -> int:
    base = root or Path(tempfile.mkdtemp(prefix="phh-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    with StandIn() as standin:
        batch_id = prepare_demo_root(base, standin)
        print(f"demo root: {base}  batch: {batch_id}  model stand-in: {standin.base_url}",
              file=sys.stderr)
        if not no_ui:
            try:
                from phh_tui.app import run_app
            except ImportError:
                no_ui = True
            else:
                # the stand-in lives in this process: attempts cannot outlive it
                return run_app(base, allow_detach=False)
        from phh_tui.headless import HeadlessLog, run_headless

        engine = Engine(base, until_idle=True)
        engine.on_event = HeadlessLog(engine)
        engine.setup()
        asyncio.run(run_headless(engine))
    return 0
