"""Finding the Codex CLI, learning its flags once, and building `codex exec` command lines.

docs/codex.md is the source of the facts encoded here: resume by explicit thread id, flags
such as `--sandbox` before the `resume` subcommand, prompt on stdin (`-`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..models import ExecutionPolicy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_NATIVE = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
_WRAPPER = "node_modules/.bin/codex"


#: The Codex CLI phh is tested with: package.json pins the same (a test keeps them equal).
PINNED_CODEX_VERSION = "0.169.0"


class CodexNotFound(Exception):
    """No usable codex binary: the message says where phh looked (`where`), then how to
    install one."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"{where}; {install_hint()}")


def install_hint() -> str:
    """One sentence: how to get the Codex CLI phh is tested with."""
    return (f"install the pinned Codex CLI with `npm install -g @openai/codex@"
            f"{PINNED_CODEX_VERSION}` (or `make setup` in a phh checkout), or set "
            "PHH_CODEX_BIN to a codex binary")


def _executable(cand: str, path: str | None) -> str | None:
    resolved = shutil.which(cand, path=path) or (cand if Path(cand).is_file() else None)
    if resolved and os.access(resolved, os.X_OK):
        return str(Path(resolved).resolve())
    return None


def locate_codex(configured: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """PHH_CODEX_BIN, else the harness config's codex.bin, else the pinned npm install, else PATH.

    The native binary is preferred over the npm wrapper: it starts faster and signals reach it
    directly (the wrapper is a Node process in front of it). A binary named explicitly
    (PHH_CODEX_BIN, codex.bin) that is not there is an error, never silently replaced by
    another Codex. Raises CodexNotFound (its message ends with `install_hint()`).
    """
    env = os.environ if env is None else env
    path = env.get("PATH")
    for source, cand in (("PHH_CODEX_BIN", env.get("PHH_CODEX_BIN")),
                         ("codex.bin", configured)):
        if cand:
            found = _executable(cand, path)
            if found is None:
                raise CodexNotFound(f"{source}={cand} is not an executable codex binary")
            return found
    looked: list[str] = []
    for rel in (_NATIVE, _WRAPPER):
        p = PROJECT_ROOT / rel
        looked.append(str(p))
        if p.is_file() and os.access(p, os.X_OK):
            return str(p.resolve())
    on_path = shutil.which("codex", path=path)
    if on_path:
        return on_path
    looked.append("codex on PATH")
    raise CodexNotFound(f"no Codex CLI found (looked at {', '.join(looked)})")


def codex_version(bin_path: str) -> str | None:
    """`codex --version`'s last word (e.g. `0.169.0`), None when it cannot be read."""
    try:
        out = subprocess.run(
            [bin_path, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split()[-1] if out else None


@dataclass(slots=True)
class CodexInfo:
    """What the installed CLI supports, read once per engine start from `--help`."""

    bin: str
    version: str | None
    exec_flags: frozenset[str] = field(default_factory=frozenset)
    resume_flags: frozenset[str] = field(default_factory=frozenset)

    def supports(self, flag: str, resume: bool = False) -> bool:
        flags = self.resume_flags if resume else self.exec_flags
        # an unreadable --help must not make phh drop flags it needs: assume support
        return not flags or flag in flags


_FLAG_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]+)")


def _help_flags(argv: list[str]) -> frozenset[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(_FLAG_RE.findall(out))


def probe_codex(bin_path: str) -> CodexInfo:
    return CodexInfo(
        bin=bin_path,
        version=codex_version(bin_path),
        exec_flags=_help_flags([bin_path, "exec", "--help"]),
        resume_flags=_help_flags([bin_path, "exec", "resume", "--help"]),
    )


def _toml_value(v: str | int | float | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_command(
    info: CodexInfo,
    policy: ExecutionPolicy,
    *,
    workdir: Path,
    schema_path: Path,
    final_txt: Path,
    resume_thread_id: str | None = None,
    resume_last: bool = False,
    extra_args: list[str] | None = None,
) -> list[str]:
    """argv for one attempt; the prompt always goes on stdin (`-`)."""
    resume = resume_thread_id is not None or resume_last
    argv = [info.bin, "exec", "--json"]
    if info.supports("--color"):
        argv += ["--color", "never"]
    argv += ["-C", str(workdir)]
    if policy.bypass_sandbox:
        argv.append("--dangerously-bypass-approvals-and-sandbox")
    else:
        argv += ["--sandbox", policy.sandbox]
    if policy.skip_git_repo_check and info.supports("--skip-git-repo-check"):
        argv.append("--skip-git-repo-check")
    if policy.model:
        argv += ["-m", policy.model]
    overrides: dict[str, str | int | float | bool] = {"approval_policy": policy.approval_policy}
    if policy.model_reasoning_effort:
        overrides["model_reasoning_effort"] = policy.model_reasoning_effort
    overrides["web_search"] = "live" if policy.web_search else "disabled"
    if policy.network_access and policy.sandbox == "workspace-write":
        overrides["sandbox_workspace_write.network_access"] = True
    overrides.update(policy.config_overrides)
    for key, value in overrides.items():
        argv += ["-c", f"{key}={_toml_value(value)}"]
    for d in policy.add_dirs:
        if info.supports("--add-dir"):
            argv += ["--add-dir", d]
    argv += ["--output-schema", str(schema_path), "-o", str(final_txt)]
    argv += list(extra_args or [])
    if resume:
        argv.append("resume")
        argv += [resume_thread_id] if resume_thread_id else ["--last"]
    argv.append("-")
    return argv
