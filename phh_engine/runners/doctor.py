"""What phh needs from the machine, checked: `phh doctor`, and the preflight before an engine
starts anything.

Each check is a function of a `DoctorContext` returning `CheckResult`s (`ok` / `warn` /
`fail`, what was found, and the fix). The list is open: a later part (a Ray runner, a catalog)
adds its own with `register_check`. Checks flagged `blocks_run` are the ones that would make
every attempt fail (no Codex binary, a missing or unparsable Codex config, a provider that
does not exist, no credential); `preflight` runs those before an engine starts anything.

Credentials are only looked at, never read or printed: the report names the variable or the
file, not its content.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ..models import CatalogFileRecord, HarnessConfig
from ..store.docread import CODEX_CONFIG_MAX_BYTES, DocumentReadError, read_document_bytes
from ..store.paths import Layout, is_phh_root
from . import credentials
from .codex_cli import (
    PINNED_CODEX_VERSION,
    CodexNotFound,
    codex_version,
    install_hint,
    locate_codex,
)

Status = Literal["ok", "warn", "fail"]

#: Codex's own providers (0.169.0): a `model_provider` outside these needs a
#: `[model_providers.<id>]` table, or Codex exits at start-up ("Model provider `x` not found").
BUILTIN_PROVIDERS: frozenset[str] = frozenset({"openai", "ollama", "lmstudio"})
#: Providers that run locally and need no credential.
_LOCAL_PROVIDERS: frozenset[str] = frozenset({"ollama", "lmstudio"})
_KEY_ENV: tuple[str, ...] = ("OPENAI_API_KEY", "CODEX_API_KEY")
#: An attempt costs about 90 inodes (issue 11 E2): below this, a root holds few attempts.
MIN_FREE_INODES = 10_000
#: The dashboard watches a few directories per attempt; distributions default to 8192.
MIN_INOTIFY_WATCHES = 65_536
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the doctor's table. `found` never carries a secret's value."""

    name: str
    status: Status
    found: str
    fix: str = ""
    blocks_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PreflightError(Exception):
    """A check that would make every attempt fail did fail; the message names each problem
    and its fix (one line each). CLI: exit 2."""

    def __init__(self, failures: list[CheckResult]) -> None:
        self.failures = failures
        super().__init__("; ".join(
            f"{r.found}" + (f" ({r.fix})" if r.fix else "") for r in failures))


@dataclass
class DoctorContext:
    """What the checks look at. `config` is the root's harness config when it loads (None
    for a directory that is not a phh root, or a broken config: the `harness config` check
    says which); `env` defaults to the process environment."""

    layout: Layout
    config: HarnessConfig | None = None
    config_error: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @cached_property
    def codex_bin(self) -> str | CodexNotFound:
        try:
            return locate_codex(self.config.codex.bin if self.config else None, env=self.env)
        except CodexNotFound as exc:
            return exc

    @cached_property
    def codex_config_path(self) -> Path | None:
        return codex_config_path(self.config, self.env)

    @cached_property
    def codex_config(self) -> dict[str, Any] | str | None:
        """The parsed Codex config; a str is why it could not be read; None: none given."""
        path = self.codex_config_path
        if path is None:
            return None
        return read_codex_config(path)


def codex_config_path(config: HarnessConfig | None,
                      env: Mapping[str, str] | None = None) -> Path | None:
    """`$PHH_CODEX_CONFIG`, else `codex.config_toml` (the file copied into every attempt's
    codex_home), resolved; None when neither is set."""
    env = os.environ if env is None else env
    raw = env.get("PHH_CODEX_CONFIG") or (config.codex.config_toml if config else None)
    if not raw:
        return None
    try:
        return Path(raw).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: reading it says so, naming the file
        return Path(raw).expanduser().absolute()


def _config_source(env: Mapping[str, str]) -> str:
    return "PHH_CODEX_CONFIG" if env.get("PHH_CODEX_CONFIG") else "codex.config_toml"


def _stat_mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return 0


def read_codex_config(path: Path) -> dict[str, Any] | str:
    """The TOML document, or one sentence naming the file and what is wrong with it."""
    try:
        # regular files only, bounded: a FIFO would block the doctor, /dev/zero never end
        data = read_document_bytes(path, max_bytes=CODEX_CONFIG_MAX_BYTES, what="Codex config")
    except FileNotFoundError:
        return f"Codex config {path} does not exist"
    except DocumentReadError as exc:
        if stat.S_ISDIR(_stat_mode(path)):
            return f"Codex config {path} is a directory, not a file"
        return str(exc)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"Codex config {path} is not UTF-8 text: {exc}"
    except tomllib.TOMLDecodeError as exc:
        return f"Codex config {path} is not valid TOML: {exc}"


# ------------------------------------------------------------------------------ checks
CheckFn = Callable[[DoctorContext], Iterable[CheckResult]]
CHECKS: list[CheckFn] = []


def register_check(fn: CheckFn) -> CheckFn:
    """Add a check to `phh doctor` (and, for results with `blocks_run`, to the preflight).
    Usable as a decorator; checks run in registration order."""
    CHECKS.append(fn)
    return fn


@register_check
def check_codex_binary(ctx: DoctorContext) -> Iterable[CheckResult]:
    found = ctx.codex_bin
    if isinstance(found, CodexNotFound):
        yield CheckResult("codex binary", "fail", found.where, install_hint(), blocks_run=True)
        return
    version = codex_version(found)
    if version is None:
        yield CheckResult("codex binary", "warn", f"{found} (version unreadable)",
                          f"phh is tested with Codex {PINNED_CODEX_VERSION}; "
                          f"check `{found} --version`")
    elif version != PINNED_CODEX_VERSION:
        yield CheckResult("codex binary", "warn", f"codex {version} at {found}",
                          f"phh is tested with {PINNED_CODEX_VERSION}: {install_hint()}")
    else:
        yield CheckResult("codex binary", "ok",
                          f"codex {version} at {found} (the version phh is tested with)")


@register_check
def check_codex_config(ctx: DoctorContext) -> Iterable[CheckResult]:
    path, doc = ctx.codex_config_path, ctx.codex_config
    if path is None:
        yield CheckResult(
            "codex config", "warn",
            "no Codex config given: Codex uses its default provider (OpenAI) and bills "
            "the account its credentials belong to",
            "set PHH_CODEX_CONFIG or codex.config_toml in phh_config.json to a config.toml "
            "that names model_provider")
        return
    if isinstance(doc, str):
        yield CheckResult("codex config", "fail", doc,
                          f"fix the file or point {_config_source(ctx.env)} at another",
                          blocks_run=True)
        return
    assert doc is not None
    provider = doc.get("model_provider")
    tables = doc.get("model_providers")
    tables = tables if isinstance(tables, dict) else {}
    if provider is None:
        yield CheckResult(
            "codex config", "warn",
            f"{path} names no model_provider: Codex uses its default provider (OpenAI)",
            'add model_provider = "<id>" and a [model_providers.<id>] table')
    elif not isinstance(provider, str) or (provider not in tables
                                           and provider not in BUILTIN_PROVIDERS):
        yield CheckResult(
            "codex config", "fail",
            f"{path}: model_provider {provider!r} has no [model_providers.{provider}] table "
            "and is not one of Codex's own (Codex refuses to start)",
            f"add [model_providers.{provider}] or use one of {sorted(BUILTIN_PROVIDERS)}",
            blocks_run=True)
    else:
        yield CheckResult("codex config", "ok", f"{path} (provider {provider})")


def _auth_json(ctx: DoctorContext) -> Path:
    cred = ctx.config.codex.credential_dir if ctx.config else None
    base = Path(cred).expanduser() if cred else Path(ctx.env.get("HOME") or Path.home()) / ".codex"
    return base / "auth.json"


def _auth_file_check(auth: Path, provider: str) -> CheckResult:
    """The kind of sign-in in auth.json and whether Codex would refresh it at its next start
    (docs/failure-classes.md#classes); never any token content."""
    kind, stale, _detail = credentials.status_of(auth)
    if kind == "unreadable":
        return CheckResult("credentials", "fail", f"{auth} is not a Codex credential file",
                           "`codex login` to write it again", blocks_run=True)
    what = "ChatGPT sign-in" if kind == "chatgpt" else "API key"
    if stale:
        return CheckResult("credentials", "warn",
                           f"{what} in {auth} (provider {provider}); the token is stale: the "
                           "first attempt refreshes it, the others wait for it",
                           "nothing to do; `codex login` if attempts end `auth`")
    return CheckResult("credentials", "ok", f"{what} in {auth} (provider {provider})")


@register_check
def check_credentials(ctx: DoctorContext) -> Iterable[CheckResult]:
    doc = ctx.codex_config
    if isinstance(doc, str):
        return  # the config check already failed; what it would need is unknown
    doc = doc or {}
    provider = doc.get("model_provider") or "openai"
    tables = doc.get("model_providers") if isinstance(doc.get("model_providers"), dict) else {}
    table = tables.get(provider) if isinstance(tables, dict) else None
    if isinstance(table, dict):
        env_key = table.get("env_key")
        if isinstance(env_key, str) and env_key:
            if ctx.env.get(env_key):
                yield CheckResult("credentials", "ok", f"${env_key} is set (provider {provider})")
            else:
                yield CheckResult("credentials", "fail",
                                  f"provider {provider} reads its key from ${env_key}, "
                                  "which is not set",
                                  f"export {env_key}=... in the engine's environment",
                                  blocks_run=True)
            return
        if not table.get("requires_openai_auth"):
            yield CheckResult("credentials", "ok",
                              f"provider {provider} needs no credential (no env_key)")
            return
    elif provider in _LOCAL_PROVIDERS:
        yield CheckResult("credentials", "ok", f"provider {provider} runs locally, no key")
        return
    keys = [k for k in _KEY_ENV if ctx.env.get(k)]
    if keys:
        yield CheckResult("credentials", "ok", f"${keys[0]} is set (provider {provider})")
        return
    auth = _auth_json(ctx)
    if auth.is_file():
        yield _auth_file_check(auth, provider)
        return
    yield CheckResult("credentials", "fail",
                      f"provider {provider} needs OPENAI_API_KEY / CODEX_API_KEY or {auth}; "
                      "none found",
                      f"export OPENAI_API_KEY=..., or `codex login` to create {auth}",
                      blocks_run=True)


@register_check
def check_root(ctx: DoctorContext) -> Iterable[CheckResult]:
    layout = ctx.layout
    if not is_phh_root(layout):
        yield CheckResult("phh root", "warn", f"{layout.root} is not a phh root",
                          "`phh init` makes it one; `phh demo` tries phh in a fresh one")
    elif ctx.config_error:
        yield CheckResult("phh root", "fail", ctx.config_error,
                          f"fix {layout.settings_path.name}")
    else:
        version = ctx.config.harness_config_version if ctx.config else "?"
        yield CheckResult("phh root", "ok", f"{layout.root} (harness config {version})")


@register_check
def check_git(ctx: DoctorContext) -> Iterable[CheckResult]:
    git = shutil.which("git", path=ctx.env.get("PATH"))
    if git is None:
        yield CheckResult("git", "warn", "git not found on PATH",
                          "install git: isolated workspaces and git artifacts need it")
        return
    try:
        out = subprocess.run([git, "--version"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    yield CheckResult("git", "ok", f"{out or 'git'} at {git}")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@register_check
def check_disk(ctx: DoctorContext) -> Iterable[CheckResult]:
    where = _existing(ctx.layout.runs if ctx.layout.runs.exists() else ctx.layout.root)
    try:
        st = os.statvfs(where)
    except OSError as exc:
        yield CheckResult("disk", "warn", f"cannot stat {where}: {exc.strerror or exc}")
        return
    free = st.f_bavail * st.f_frsize
    need = ctx.config.limits.min_free_disk_bytes if ctx.config else 1 << 30
    gib = free / (1 << 30)
    if free < need:
        yield CheckResult("disk", "fail", f"{gib:.1f} GiB free under {where}",
                          f"free space (the engine starts nothing below "
                          f"limits.min_free_disk_bytes = {need} bytes)")
    else:
        yield CheckResult("disk", "ok", f"{gib:.1f} GiB free under {where}")
    if st.f_files == 0:  # the filesystem has no inode limit (btrfs, some overlays)
        yield CheckResult("inodes", "ok", f"no inode limit under {where}")
    elif st.f_favail < MIN_FREE_INODES:
        yield CheckResult("inodes", "fail", f"{st.f_favail} inodes free under {where}",
                          f"free inodes (`phh gc`): an attempt takes about 90, "
                          f"want at least {MIN_FREE_INODES}")
    else:
        yield CheckResult("inodes", "ok", f"{st.f_favail} inodes free under {where}")


@register_check
def check_inotify(ctx: DoctorContext) -> Iterable[CheckResult]:
    try:
        limit = int(INOTIFY_LIMIT.read_text().strip())
    except (OSError, ValueError):
        yield CheckResult("inotify watches", "ok",
                          f"{INOTIFY_LIMIT} not readable (not Linux?): the dashboard polls")
        return
    if limit < MIN_INOTIFY_WATCHES:
        yield CheckResult("inotify watches", "warn", f"max_user_watches = {limit}",
                          "`sysctl fs.inotify.max_user_watches=524288` (the dashboard and "
                          "other tools share the per-user limit)")
    else:
        yield CheckResult("inotify watches", "ok", f"max_user_watches = {limit}")


@register_check
def check_engine(ctx: DoctorContext) -> Iterable[CheckResult]:
    serving = serving_runners(ctx.layout)
    if serving:
        yield CheckResult("engine", "ok", f"serving this root (runner {', '.join(serving)})")
    else:
        yield CheckResult("engine", "ok", "none serving this root",
                          "`phh run` (or bare `phh`) starts one")


# ------------------------------------------------------------------------------ helpers
def serving_runners(layout: Layout) -> list[str]:
    """Runner ids whose engine lock is held right now (each engine holds it while it runs)."""
    from ..store.files import lock_held

    if not layout.runners.is_dir():
        return []
    return sorted(p.parent.name for p in layout.runners.glob("*/.engine.lock") if lock_held(p))


def context_for(layout: Layout, env: Mapping[str, str] | None = None) -> DoctorContext:
    """Load the root's harness config without writing anything (a broken config is a row)."""
    from ..store.harness_config import ConfigError, load_config

    config: HarnessConfig | None = None
    error: str | None = None
    if is_phh_root(layout):
        try:
            config = load_config(layout, write=False)
        except ConfigError as exc:
            error = str(exc)
    return DoctorContext(layout, config, error, dict(os.environ) if env is None else dict(env))


def run_checks(ctx: DoctorContext, checks: Iterable[CheckFn] | None = None
               ) -> list[CheckResult]:
    """Every registered check's rows, in order. A check that raises becomes a `fail` row
    naming the exception: the doctor itself never crashes."""
    rows: list[CheckResult] = []
    for fn in CHECKS if checks is None else checks:
        try:
            rows.extend(fn(ctx))
        except Exception as exc:
            rows.append(CheckResult(fn.__name__.removeprefix("check_").replace("_", " "),
                                    "fail", f"the check raised {type(exc).__name__}: {exc}"))
    return rows


def check_codex_present(ctx: DoctorContext) -> Iterable[CheckResult]:
    """The binary check without the version probe (the engine probes Codex right after)."""
    found = ctx.codex_bin
    if isinstance(found, CodexNotFound):
        yield CheckResult("codex binary", "fail", found.where, install_hint(), blocks_run=True)
    else:
        yield CheckResult("codex binary", "ok", found)


#: What an engine checks itself before starting anything (Engine.setup). The CLI's `phh run`
#: adds the credential check (`RUN_PREFLIGHT`): an engine started in code may be waiting for
#: a credential to appear.
ENGINE_PREFLIGHT: tuple[CheckFn, ...] = (check_codex_present, check_codex_config)
RUN_PREFLIGHT: tuple[CheckFn, ...] = (*ENGINE_PREFLIGHT, check_credentials)


def preflight(layout: Layout, config: HarnessConfig | None,
              checks: Iterable[CheckFn] = RUN_PREFLIGHT,
              env: Mapping[str, str] | None = None) -> None:
    """Raise PreflightError when a check that would fail every attempt fails."""
    ctx = DoctorContext(layout, config, None, dict(os.environ) if env is None else dict(env))
    failures = [r for r in run_checks(ctx, checks) if r.status == "fail" and r.blocks_run]
    if failures:
        raise PreflightError(failures)


def startup_error_line(stderr_tail: str) -> str | None:
    """The last line of Codex's stderr that says `error` at its start (Codex's start-up
    failures: a config it cannot parse, an unknown provider or flag), with the line after it
    when it ends in ':' ("Error loading config.toml:" then the parser's message)."""
    lines = [ln.strip() for ln in stderr_tail.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lower().startswith("error"):
            line = lines[i]
            if line.endswith(":"):
                nxt = next((ln for ln in lines[i + 1:] if ln), "")
                line = f"{line} {nxt}".strip()
            return line[:500]
    return None


@register_check
def check_catalog(ctx: DoctorContext) -> Iterable[CheckResult]:
    """The catalog (phh_engine/store/catalog.py): a local filesystem, a healthy file of our
    schema, and every batch on disk known to it. Only looks: never rebuilds or writes."""
    from ..store import catalog

    try:
        path = catalog.catalog_path(ctx.layout)
    except catalog.CatalogError as exc:  # PHH_CATALOG names a directory
        yield CheckResult("catalog", "fail", str(exc).split(";")[0],
                          f"set {catalog.ENV_PATH} to a file path")
        return
    try:
        catalog.check_location(path)
    except catalog.CatalogError as exc:
        yield CheckResult("catalog", "fail", str(exc).split(";")[0],
                          f"set {catalog.ENV_PATH} to a path on a local disk")
        return
    why = catalog.unwritable(path)
    if why is not None:  # a healthy file there is not damaged: it cannot be kept current
        yield CheckResult("catalog", "fail", f"{path} cannot be written: {why}",
                          f"make it writable, or set {catalog.ENV_PATH} to a writable local "
                          "path (rebuilt there from runs/)")
        return
    stale = _engine_writes_elsewhere(ctx.layout, path)
    if stale is not None:
        yield CheckResult("catalog", "warn", f"{path}: {stale}",
                          "the serving engine reopens it at its next board write; if this "
                          "stays, restart the engine")
        return
    if not path.exists():
        yield CheckResult("catalog", "ok", f"{path} not built yet (the engine, `phh history` "
                          "or `phh reindex` build it from runs/)")
        return
    problem = catalog._inspect(path, True)
    if problem is not None:
        yield CheckResult("catalog", "warn", f"{path}: {problem}",
                          "nothing to do: it is discarded and rebuilt from runs/ at the next "
                          "engine start or read (or now: `phh reindex`)")
        return
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            known = {r[0] for r in conn.execute("SELECT batch_id FROM batches")}
            attempts = conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        yield CheckResult("catalog", "warn", f"{path}: {exc}", "`phh reindex` rebuilds it")
        return
    missing = set(catalog.batch_dirs(ctx.layout)) - known
    if missing:
        yield CheckResult("catalog", "warn", f"{path}: {len(missing)} batch(es) on disk not in "
                          "it yet", "they are added at the next engine start or read "
                          "(`phh reindex` adds them now)")
        return
    yield CheckResult("catalog", "ok", f"{path}: {len(known)} batch(es), {attempts} "
                      "attempt(s), integrity ok")


def _engine_writes_elsewhere(layout: Layout, path: Path) -> str | None:
    """Why the file at `path` is not the one a serving engine writes (None: it is, or no
    engine says): each engine records the catalog file it writes (`catalog_file` in its
    runner directory, engine/catalog_file.py)."""
    from ..store.files import read_model

    serving = serving_runners(layout)  # (one flock probe per runner: asked once)
    for name in serving:
        rec = read_model(layout.runners / name / "catalog_file.json", CatalogFileRecord)
        if rec is None or rec.path != str(path):
            continue
        try:
            st = os.stat(path)
        except OSError:
            return f"runner {name}'s engine writes a file that is gone"
        if [st.st_dev, st.st_ino] != rec.file_id:
            return f"runner {name}'s engine writes another (older) file than this one"
        if rec.problem:
            return f"runner {name}'s engine cannot write it: {rec.problem}"
    return None
