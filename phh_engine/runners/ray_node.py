"""The Ray node agent: one detached named actor per cluster node that starts, watches, cancels
and re-adopts the Codex agents of that node (docs/scale-out.md).

It reuses the local runner whole (prepare, spawn, monitor, conclude): `NodeRunner` only
changes how the wrapper is spawned (double-forked, so Ray's SIGKILL of a dying worker's
children and process group reaches neither Codex nor the exit-code wrapper), records the
node label in meta.json, and leaves current.json to the engine (its single writer). It
writes exactly the local runner's files, inside the attempt directory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import hashlib
import os
import pickle
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psutil
from typing_extensions import override

from ..models import AttemptState, BatchMeta
from ..schemas import default_run_report_schema_path
from ..store.files import read_model
from ..store.harness_config import load_config
from ..store.paths import CODEX_HOME, EXIT_CODE, STATE, Layout
from ..store.views import AttemptView
from .attempt import AttemptPlan
from .codex_cli import locate_codex, probe_codex
from .doctor import codex_config_path
from .local import LocalRunner
from .process import _WRAPPER, _AdoptedHandle, _Handle, kill_tree

#: Path patterns (fnmatch, separated by os.pathsep) a node treats as not visible, read from the
#: node's environment when its agent starts: take a node off a volume known to be stale or
#: unmounted there without stopping it (and how the tests give one simulated node a mount
#: the others have).
HIDDEN_PATHS_ENV = "PHH_NODE_HIDDEN_PATHS"
#: run ids an agent remembers as ended for `ended` (an engine that falls further behind reads
#: the attempts' files, which it does every second anyway)
ENDED_KEPT = 4096
#: I/O threads per node agent. The local runner keeps 2 (runners/local.py IO_THREADS: on one
#: host they share the cores with the engine and every extra one costs system CPU); a node's
#: cores are its own, and each spawn there holds a thread until the double fork reports the
#: wrapper's pid, so 2 threads capped an agent at a few dozen starts a second under load.
NODE_IO_THREADS = 8
#: custom resource a node offers per Codex agent it may run (`ray start --resources`)
SLOTS_RESOURCE = "codex_slots"
#: node label naming a node for phh (`ray start --labels phh-node=a`); else its node id
NODE_LABEL = "phh-node"
#: The wrapper tells its own pid on fd 3 (it is not our child, so Popen cannot), then starts
#: its lease watchdog: a background subshell in the attempt's process group that ends the
#: group when state.json (the agent's heartbeat) has not changed for a whole lease. A node
#: whose agent is gone (raylet death, lost node) thus stops its Codex before the engine
#: declares the attempt runner_lost and retries it elsewhere: never two live agents per step.
#: Shell builtins only per round (`: >` and `-nt`), plus one `sleep`.
_LEASE = ('r="${{TMPDIR:-/tmp}}/phh-lease.$$"; s="${{0%/*}}/state.json"; '
          '( while :; do : > "$r"; sleep {lease}; [ "$s" -nt "$r" ] || '
          '{{ rm -f "$r"; kill -KILL -$$; }}; done ) </dev/null >/dev/null 2>&1 & ')
_DETACHED = 'printf "%s\\n" "$$" >&3; exec 3>&-; ' + _LEASE + _WRAPPER


def lease_seconds(heartbeat_seconds: float) -> int:
    """How long a detached agent outlives its node agent's silence (3 heartbeats + 3 s:
    room for the actor's restart, ~2 s, and its re-adoption)."""
    return int(3 * heartbeat_seconds + 3)


def lost_after_seconds(heartbeat_seconds: float) -> float:
    """When the engine may call an attempt lost: the watchdog ends it within two leases of
    its last heartbeat (the check that misses a beat comes one lease after the last
    round started)."""
    return 2 * lease_seconds(heartbeat_seconds) + heartbeat_seconds + 2


def actor_name(label: str) -> str:
    """The node agent's actor name: `phh-node-<label>`."""
    return f"phh-node-{label}"


def default_namespace(root: Path) -> str:
    """A Ray namespace tied to the runs root, so two roots on one cluster never share agents."""
    return "phh-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def hidden_patterns(environ: dict[str, str] | None = None) -> list[str]:
    """The node's HIDDEN_PATHS_ENV patterns (empty when unset)."""
    raw = (os.environ if environ is None else environ).get(HIDDEN_PATHS_ENV, "")
    return [p for p in raw.split(os.pathsep) if p]


def sees(path: str, hidden: list[str]) -> bool:
    """Whether this machine can use `path`: an existing directory, not hidden. On a shared
    filesystem a directory written on another node may be missing here for a while (NFS
    caches lookups): the answer is for now, not forever."""
    if any(fnmatch.fnmatchcase(path, pat) for pat in hidden):
        return False
    return os.path.isdir(path)


def spawn_detached(exit_code_path: Path, argv: list[str], *, stdin: Any, stdout: Any,
                   stderr: Any, cwd: Path, env: dict[str, str], lease: int) -> int:
    """Start the exit-code wrapper in a new session that is NOT our child (`setsid -f`
    forks and its parent exits at once); returns the wrapper's pid. Raises OSError.

    posix_spawn rather than fork: a Ray worker is multi-threaded."""
    r, w = os.pipe()
    try:
        acts = [(os.POSIX_SPAWN_DUP2, stdin.fileno(), 0), (os.POSIX_SPAWN_DUP2, stdout.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, stderr.fileno(), 2), (os.POSIX_SPAWN_DUP2, w, 3)]
        argv0 = ["setsid", "-f", "/bin/sh", "-c", _DETACHED.format(lease=lease),
                 str(exit_code_path), *argv]
        # posix_spawn takes no working directory here and a chdir around it would race
        # the worker's other threads: the first sh changes directory, then becomes setsid
        script = 'cd "$1" || exit 127; shift; exec "$@"'
        pid = os.posix_spawnp("/bin/sh", ["/bin/sh", "-c", script, "phh-spawn", str(cwd),
                                          *argv0], env, file_actions=acts)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    os.close(w)
    try:
        with os.fdopen(r, "rb") as fh:
            out = fh.read()  # EOF once setsid exited and the wrapper closed fd 3
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    try:
        return int(out.strip())
    except ValueError:
        raise OSError(f"could not start {argv[0]} detached (setsid -f)") from None


T = TypeVar("T")


class NodeRunner(LocalRunner):
    """The local runner on a cluster node: detached spawns, node label, no current.json,
    NODE_IO_THREADS I/O threads."""

    def __init__(self, *args: Any, node: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node
        self.writes_pointers = False

    @override
    async def _in_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._pool is None:  # the local runner's pool, sized for a node
            self._pool = ThreadPoolExecutor(NODE_IO_THREADS, thread_name_prefix="phh-node-io")
        return await super()._in_io(fn, *args, **kwargs)

    @override
    def _spawn(self, exit_code_path: Path, argv: list[str], *, stdin: Any, stdout: Any,
               stderr: Any, cwd: Path, env: dict[str, str]) -> _Handle:
        pid = spawn_detached(exit_code_path, argv, stdin=stdin, stdout=stdout, stderr=stderr,
                             cwd=cwd, env=env,
                             lease=lease_seconds(self.config.codex.heartbeat_seconds))
        return _AdoptedHandle(pid)


class NodeAgent:
    """The actor body (wrapped by `ray.remote` in ray_runner.agent_class). Methods are
    called by the engine's RayRunner; none of them writes outside attempt directories."""

    def __init__(self, root: str, runner_id: str, label: str) -> None:
        self.layout = Layout(root)
        self.label = label
        if not self.layout.runs.is_dir():
            raise RuntimeError(f"node {label} cannot see the runs root {self.layout.runs}: "
                               "mount the shared filesystem at the same path on every node")
        config = load_config(self.layout, write=False)
        codex = probe_codex(locate_codex(config.codex.bin))
        self.runner = NodeRunner(
            self.layout, config, codex, runner_id,
            default_schema=default_run_report_schema_path(), on_change=lambda *a: None,
            codex_config_toml=codex_config_path(config), node=label)
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.hidden = hidden_patterns()
        self.started_at = time.time()
        #: run_id -> attempt directory, of the attempts in `tasks`
        self.paths: dict[str, str] = {}
        #: (seq, run_id, its codex_home/sessions, whether this node sees that) of attempts
        #: that ended here, oldest first; `ended` long-polls it
        self._ended: deque[tuple[int, str, str | None, bool]] = deque(maxlen=ENDED_KEPT)
        self._seq = 0
        self._ended_ev = asyncio.Event()
        self._adopted = False

    # ------------------------------------------------------------------ calls
    async def status(self, probe: list[str] | None = None) -> dict[str, Any]:
        """{label, node_id, pid, running: [run_id], started_at, root: bool, sees: {path:
        bool}}: `sees` answers for each directory in `probe` whether this node can use it
        (`sees()`); `root` whether it still sees the runs root. Adopts on the first call."""
        await self._adopt_once()
        import ray  # the actor runs inside Ray

        paths = [str(self.layout.runs), *(probe or [])]
        # a stat on a shared filesystem may block: off the actor's loop when there is work
        seen = ([sees(p, self.hidden) for p in paths] if not probe else
                await asyncio.to_thread(lambda: [sees(p, self.hidden) for p in paths]))
        return {"label": self.label, "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "running": sorted(self.tasks),
                "started_at": self.started_at, "root": seen[0],
                "sees": dict(zip(paths[1:], seen[1:], strict=True))}

    async def start(self, payload: bytes) -> dict[str, Any]:
        """Start a claimed attempt: payload is pickle((plan, batch, job, step, (run_id,
        path))) of a batch trimmed to the attempt's job. Returns at once; `wait` follows."""
        await self._adopt_once()
        plan, batch, job, step, claimed = pickle.loads(payload)
        run_id, path = claimed
        if not Path(path).is_dir():
            raise RuntimeError(f"node {self.label} cannot see the attempt directory {path}: "
                               "the runs root must be on a filesystem shared by every node")
        task = asyncio.ensure_future(self.runner.run(plan, batch, job, step, claimed))
        self.tasks[run_id] = task
        self.paths[run_id] = str(path)
        task.add_done_callback(functools.partial(self._forget, run_id))
        return {"label": self.label, "pid": os.getpid()}

    async def wait(self, run_id: str) -> str | None:
        """Block until the attempt ends here; its terminal status, or None when this agent
        does not run it (the engine then reads the attempt's files)."""
        task = self.tasks.get(run_id)
        if task is None:
            return None
        view = await asyncio.shield(task)
        status: str | None = view.status
        return status

    async def ended(self, epoch: float, since: int, timeout: float = 5.0) -> dict[str, Any]:
        """{epoch, seq, ended: [run_id], sees: {sessions dir: bool}}: the attempts that ended
        here after `since` (all this agent remembers when `epoch`, the `started_at` the caller
        last saw, is not this agent's: it restarted), and whether this node sees each one's
        `codex_home/sessions` (what a resume from it copies: the engine learns where it can
        place that resume with the end itself). Waits up to `timeout` seconds for an end. One
        pending call per node replaces a pending `wait` per attempt."""
        if since < 0:  # the caller's first call: where the sequence is now
            return {"epoch": self.started_at, "seq": self._seq, "ended": []}
        if epoch != self.started_at:
            since = 0
        if since >= self._seq:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended_ev.wait(), timeout)
        new = [e for e in self._ended if e[0] > since]
        return {"epoch": self.started_at, "seq": self._seq, "ended": [e[1] for e in new],
                "sees": {e[2]: e[3] for e in new if e[2] is not None}}

    def _forget(self, run_id: str, _task: asyncio.Future[AttemptView]) -> None:
        self.tasks.pop(run_id, None)
        path = self.paths.pop(run_id, None)
        sessions = str(Path(path) / CODEX_HOME / "sessions") if path is not None else None
        self._seq += 1
        self._ended.append((self._seq, run_id, sessions,
                            sessions is not None and sees(sessions, self.hidden)))
        ev, self._ended_ev = self._ended_ev, asyncio.Event()
        ev.set()

    def cancel(self, run_id: str, reason: str = "canceled") -> bool:
        """Stop an attempt through its process group (SIGINT, SIGKILL after the grace)."""
        return self.runner.cancel(run_id, reason)

    # --------------------------------------------------------------- adoption
    async def _adopt_once(self) -> None:
        if self._adopted:
            return
        self._adopted = True
        found = await asyncio.to_thread(self._scan)
        for path, pid in found:
            self._adopt(path, pid)

    def _scan(self) -> list[tuple[Path, int]]:
        """Wrappers on this machine writing under our runs root: kill those whose attempt is
        terminal (no step may have two live agents); return ours still current."""
        runs = str(self.layout.runs) + os.sep
        mine: list[tuple[Path, int]] = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info.get("cmdline") or []
            with contextlib.suppress(OSError):  # the lease watchdog shares the cmdline
                if os.getpgid(p.info["pid"]) != p.info["pid"]:
                    continue
            if len(cmd) < 4 or cmd[0] != "/bin/sh" or not cmd[3].startswith(runs) \
                    or not cmd[3].endswith(os.sep + EXIT_CODE):
                continue
            path = Path(cmd[3]).parent
            st = read_model(path / STATE, AttemptState)
            if st is None:
                continue
            if st.status not in ("queued", "running"):
                kill_tree(int(p.info["pid"]), signal.SIGKILL)
                continue
            if self._node_of(path) == self.label:
                mine.append((path, int(p.info["pid"])))
        return mine

    @staticmethod
    def _node_of(path: Path) -> str | None:
        from ..store.index import load_attempt

        view = load_attempt(path)
        return view.meta.environment_snapshot.node if view.meta else None

    def _adopt(self, path: Path, pid: int) -> None:
        from ..store.index import load_attempt

        view = load_attempt(path)
        if view.meta is None or view.state is None or view.run_id in self.tasks:
            return
        meta = view.meta
        if view.state.pid != pid:
            view.state = view.state.model_copy(update={"pid": pid})
        plan = AttemptPlan(batch_id=meta.batch_id, job_id=meta.job_id, step_id=meta.step_id,
                           runner_id=meta.runner_id)
        artifacts: list[str] = []
        bm = read_model(self.layout.batch_meta(meta.batch_id), BatchMeta)
        for j in bm.jobs if bm else []:
            for s in j.steps if j.job_id == meta.job_id else []:
                if s.step_id == meta.step_id:
                    artifacts = list(s.artifacts_expected)
        task = asyncio.ensure_future(self.runner.adopt(plan, view, artifacts))
        self.tasks[view.run_id] = task
        self.paths[view.run_id] = str(view.path)
        task.add_done_callback(functools.partial(self._forget, view.run_id))
