"""RayRunner: the engine's side of the Ray cluster runner (docs/scale-out.md).

The engine stays the only scheduler and the only writer of claims, current.json and boards.
This runner picks a node with a free `codex_slots` slot, hands the claimed attempt to that
node's agent (ray_node.NodeAgent, one detached named actor per node), and follows the
attempt through its files on the shared runs root. Ray errors are hints only: an attempt is
finalised `runner_lost` when its heartbeat is stale and it has no exit code.
"""

# Over 500 lines on purpose (~620): one class holds the node table, placement (which node
# may run a resume: visibility answers and their cache) and the following of attempts,
# because all three read and change the same per-node slots under the engine's loop; the
# node agent's side is ray_node.py, the checks ray_doctor.py.

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..models import AttemptState, EventKind, HarnessConfig, utcnow
from ..store.files import read_model
from ..store.index import load_attempt
from ..store.paths import CODEX_HOME, EXIT_CODE, STATE, Layout
from ..store.pointers import update_current
from ..store.views import AttemptView, BatchView, JobView, StepView
from .attempt import AttemptPlan, LiveAttempt
from .base import Hold, NodeStatus
from .codex_cli import CodexInfo
from .conclude import record_runner_lost
from .local import LocalRunner
from .ray_node import (
    NODE_LABEL,
    SLOTS_RESOURCE,
    NodeAgent,
    actor_name,
    default_namespace,
    lost_after_seconds,
)

log = logging.getLogger(__name__)

#: seconds between looks at the cluster (node table, agents) and at a followed attempt
POLL = 1.0
#: ray.init attempts before the engine gives up on the cluster
CONNECT_TRIES = 3
#: an agent call that takes longer than this counts as unanswered (a hint, never a verdict)
CALL_TIMEOUT = 10.0
#: a step waits this long (s) for the nodes' answer whether they see its resume source; the
#: answer normally ends the wait sooner (on_placement)
PROBE_WAIT = 2.0
#: a "cannot see" answer is asked again after this (s): a shared filesystem may show a
#: directory written elsewhere only after its lookup cache expires (NFS: up to a minute)
RECHECK = 5.0
#: an unused reservation (the engine placed, then did not run: claim lost) ends after this (s)
RESERVATION = 10.0
#: (batch, job, step)
StepKey = tuple[str, str, str]
#: a held step waiting for a free slot (RayRunner._holds)
SLOT = "\0slot"
#: seconds an `ended` long-poll waits for an attempt to end before it is asked again
ENDED_WAIT = 5.0
#: paths each node's visibility answers are kept for (oldest dropped first)
SEES_CACHE = 4096


class RayUnavailable(Exception):
    """The Ray cluster cannot be reached or used (message names the address and cause)."""


def host_port(address: str) -> tuple[str, int] | None:
    """HOST:PORT of `ray://HOST:PORT` or `HOST:PORT`; None for `auto` and the like."""
    rest = address.split("://", 1)[-1].strip().rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = 3.0) -> str | None:
    """Why the address does not answer a TCP connect (None: it does, or it is not HOST:PORT).
    ray.init on a dead address retries for over a minute before it says so."""
    hp = host_port(address)
    if hp is None:
        return None
    try:
        with socket.create_connection(hp, timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


@dataclass(slots=True)
class _Node:
    label: str
    node_id: str
    slots_total: int
    agent: Any
    alive: bool = True
    used: set[str] = field(default_factory=set)
    last_seen: datetime | None = None
    agents_running: int = 0
    error: str | None = None
    #: run ids its agent held at its last answer
    running: set[str] = field(default_factory=set)
    #: a task long-polling its agent's `ended`
    ends: asyncio.Task[None] | None = None
    #: directory -> (visible from this node, monotonic time of the answer)
    sees: dict[str, tuple[bool, float]] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Alive, and its agent answered its last call (a node that cannot see the runs root
        never does: its agent refuses to start, naming the node and the path)."""
        return self.alive and self.error is None


def resume_sessions(plan: AttemptPlan) -> str | None:
    """The directory a plan's attempt copies its conversation from (the source attempt's
    `codex_home/sessions`, the same choice as LocalRunner._provision); None when it starts
    a new thread."""
    source = plan.resume.source if plan.resume else None
    if plan.resume_same_thread and plan.retry_of is not None:
        source = plan.retry_of
    return str(source.path / CODEX_HOME / "sessions") if source is not None else None


def _agent_class() -> Any:
    import ray

    return ray.remote(NodeAgent)


class RayRunner:
    """Runner protocol (runners/base.py) over a Ray cluster.

    `address` is what `ray.init(address=...)` takes (`ray://...`, `HOST:PORT`, `auto`);
    `namespace` defaults to one derived from the runs root. Raises RayUnavailable from
    `connect` when the cluster cannot be reached."""

    def __init__(self, layout: Layout, config: HarnessConfig, codex: CodexInfo, runner_id: str,
                 *, address: str, namespace: str | None = None,
                 slots_resource: str = SLOTS_RESOURCE, node_labels: dict[str, str] | None = None,
                 default_schema: Path,
                 on_change: Callable[[str, str, str, AttemptView], None],
                 on_node: Callable[[EventKind, str, str], None] | None = None,
                 on_placement: Callable[[set[StepKey]], None] | None = None,
                 codex_config_toml: Path | None = None) -> None:
        self.layout = layout
        self.config = config
        self.runner_id = runner_id
        self.address = address
        self.namespace = namespace or default_namespace(layout.root)
        self.slots_resource = slots_resource
        self.node_labels = dict(node_labels or {})
        self.on_change = on_change
        self.on_node = on_node or (lambda kind, label, detail: None)
        #: called (on the loop) with the steps `place` held that may have a node now
        self.on_placement = on_placement or (lambda keys: None)
        # claims, spawn failures and the engine's own finalisations are the local runner's
        # code, run by the engine (the single writer of claims and current.json)
        self._local = LocalRunner(layout, config, codex, runner_id,
                                  default_schema=default_schema, on_change=on_change,
                                  codex_config_toml=codex_config_toml)
        self.live: dict[str, LiveAttempt] = self._local.live
        #: store write failures of the engine-side writes (claims, finalisations)
        self.writes = self._local.writes
        self._nodes: dict[str, _Node] = {}
        self._where: dict[str, str] = {}  # run_id -> node label
        self._watcher: asyncio.Task[None] | None = None
        #: no heartbeat for this long and no exit code: the attempt's node is gone (and its
        #: lease watchdog has ended any Codex still running there)
        self.lost_after = lost_after_seconds(config.codex.heartbeat_seconds)
        self._turn = 0  # round-robin among equally free nodes
        self._closed = False
        #: (batch, job, step) -> (node label, monotonic time): placed, not yet run
        self._placed: dict[tuple[str, str, str], tuple[str, float]] = {}
        #: directories to ask every node about in the next status round
        self._want: set[str] = set()
        self._kick = asyncio.Event()  # a status round now (a probe is wanted)
        #: steps `place` held -> what may end the wait: a resume source's path (an answer
        #: about it), SLOT (a slot freed), or None (only a node change, or its time)
        self._holds: dict[StepKey, str | None] = {}
        #: run_id -> set when its node says it ended (followers wait on it, POLL at most)
        self._ends: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ connection
    def connect(self) -> None:
        """ray.init and the first look at the nodes (blocking). Raises RayUnavailable."""
        import ray

        why = probe(self.address)
        if why is not None:
            raise RayUnavailable(f"cannot reach the Ray cluster at {self.address}: {why}; "
                                 "start it (`ray start --head`) or fix the address")
        for attempt in range(CONNECT_TRIES):
            try:
                ray.init(address=self.address, namespace=self.namespace,
                         ignore_reinit_error=True, log_to_driver=False,
                         logging_level=logging.WARNING)
                break
            except Exception as exc:
                # seen once right after another driver's shutdown in the same process
                # ("'NoneType' object has no attribute 'address_info'"): a second try works
                if attempt == CONNECT_TRIES - 1:
                    raise RayUnavailable(f"cannot connect to the Ray cluster at "
                                         f"{self.address}: {exc}") from None
                with contextlib.suppress(Exception):
                    ray.shutdown()
                time.sleep(1.0)
        for kind, label, detail in self._refresh_nodes():
            self.on_node(kind, label, detail)

    def close(self) -> None:
        import ray

        self._closed = True
        self._local.close()
        with contextlib.suppress(Exception):
            ray.shutdown()  # the detached agents and their Codex processes live on

    def _refresh_nodes(self) -> list[tuple[EventKind, str, str]]:
        """Node table from Ray (blocking); (kind, label, detail) for each join and loss."""
        import ray

        events: list[tuple[EventKind, str, str]] = []
        seen: set[str] = set()
        # Ray's own API carries no annotations
        table: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        for n in table:
            slots = int((n.get("Resources") or {}).get(self.slots_resource, 0))
            labels = n.get("Labels") or {}
            if not n.get("Alive") or slots <= 0:
                continue
            if any(labels.get(k) != v for k, v in self.node_labels.items()):
                continue
            node_id = n["NodeID"]
            label = labels.get(NODE_LABEL) or node_id[:12]
            seen.add(label)
            node = self._nodes.get(label)
            if node is None or not node.alive or node.node_id != node_id:
                selector = ({NODE_LABEL: label} if labels.get(NODE_LABEL)
                            else {"ray.io/node-id": node_id})
                agent = _agent_class().options(
                    name=actor_name(label), namespace=self.namespace, get_if_exists=True,
                    lifetime="detached", max_restarts=-1, max_task_retries=0, num_cpus=0,
                    label_selector=selector,
                ).remote(str(self.layout.root), self.runner_id, label)
                used = node.used if node else set()
                self._nodes[label] = _Node(label, node_id, slots, agent, used=used)
                events.append(("node_joined", label, f"{slots} {self.slots_resource}"))
            else:
                node.slots_total = slots
        for label, node in self._nodes.items():
            if node.alive and label not in seen:
                node.alive = False
                events.append(("node_lost", label, f"{len(node.used)} attempt(s) on it"))
        return events

    async def _watch(self) -> None:
        """Every POLL: the node table, then a status round (which makes a restarted agent
        adopt its running attempts); a wanted probe starts a status round at once."""
        table_at = -POLL
        while not self._closed:
            self._kick.clear()
            try:
                if time.monotonic() - table_at >= POLL:
                    table_at = time.monotonic()
                    events = await asyncio.to_thread(self._refresh_nodes)
                    for kind, label, detail in events:
                        self.on_node(kind, label, detail)
                    if events:
                        self._release(set(self._holds))
                for node in self._nodes.values():
                    if node.alive and (node.ends is None or node.ends.done()):
                        node.ends = asyncio.ensure_future(self._ends_loop(node))
                await self._status_round()
            except Exception:
                if not self._closed:
                    log.exception("ray node watch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(),
                                       max(0.0, POLL - (time.monotonic() - table_at)))

    async def _status_round(self) -> None:
        """Every live agent's status at once, with the wanted directories probed; answers go
        to each node's `sees` cache, and a held step is told to ask again."""
        paths = sorted(self._want)
        alive = [n for n in self._nodes.values() if n.alive]
        await asyncio.gather(*(self._status(n, paths) for n in alive))
        self._want.difference_update(paths)
        if paths:
            answered = set(paths)
            self._release({k for k, why in self._holds.items() if why in answered})

    async def _status(self, node: _Node, paths: list[str]) -> None:
        try:
            st = await self._call(node.agent.status.remote(paths), CALL_TIMEOUT)
        except Exception as exc:
            node.error = f"{type(exc).__name__}: {exc}"[:200]
            node.running = set()  # unknown: its followers judge by the heartbeats
            return
        node.last_seen = utcnow()
        node.running = set(st.get("running", []))
        node.agents_running = len(node.running)
        node.error = None if st.get("root", True) else (
            f"node {node.label} cannot see the runs root {self.layout.runs}: mount the shared "
            "filesystem at the same path on every node")
        self._remember(node, st.get("sees") or {})

    @staticmethod
    def _remember(node: _Node, answers: dict[str, bool]) -> None:
        """Cache a node's answers {directory: visible from it}."""
        at = time.monotonic()
        for path, seen in answers.items():
            node.sees.pop(path, None)  # re-inserted last: the cache drops the oldest first
            node.sees[path] = (bool(seen), at)
        while len(node.sees) > SEES_CACHE:
            node.sees.pop(next(iter(node.sees)))

    def _probe(self, path: str) -> None:
        """Ask every node whether it sees `path` in a status round starting now."""
        self._want.add(path)
        self._kick.set()
        self._ensure_watch()

    def _release(self, keys: set[StepKey]) -> None:
        """These held steps may have a node now: the engine asks `place` again for them
        (only them: a thousand steps waiting to see a path cost nothing per attempt end)."""
        if keys:
            for k in keys:
                self._holds.pop(k, None)
            self.on_placement(keys)

    def _slot_freed(self) -> None:
        if self._holds:
            self._release({k for k, why in self._holds.items() if why == SLOT})

    def _ensure_watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    @staticmethod
    async def _call(ref: Any, timeout: float | None) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)

    # ------------------------------------------------------------ protocol
    def beat_ages(self) -> dict[str, float]:
        """Empty: node agents write the heartbeats on their own hosts, so the engine has no
        monotonic age for them; stuck detection uses the heartbeat times in state.json."""
        return {}

    def slots(self) -> int | None:
        """codex_slots of the usable nodes (alive, agent answering). Called on the loop by
        the scheduler: it also keeps the node watch running while the engine is idle."""
        with contextlib.suppress(RuntimeError):  # no loop in this thread: nothing to start
            asyncio.get_running_loop()
            self._ensure_watch()
        return sum(n.slots_total for n in self._nodes.values() if n.usable)

    def nodes(self) -> list[NodeStatus]:
        return [NodeStatus(self.runner_id, n.label, n.alive, n.slots_total, len(n.used),
                           n.agents_running, n.last_seen, n.node_id, n.error)
                for n in sorted(self._nodes.values(), key=lambda n: n.label)]

    def claim(self, plan: AttemptPlan) -> tuple[str, Path] | None:
        return self._local.claim(plan)

    def cancel(self, run_id: str, reason: str = "canceled") -> bool:
        live = self.live.get(run_id)
        if live is None:
            return False
        live.cancel_reason = reason
        live.cancel_requested.set()
        node = self._nodes.get(self._where.get(run_id, ""))
        if node is not None:
            node.agent.cancel.remote(run_id, reason)  # never ray.cancel: the agent signals
        return True

    # ------------------------------------------------------------ placement
    def place(self, plan: AttemptPlan) -> Hold | None:
        """Placing protocol (runners/base.py): reserve a node for the plan, or say why none
        (docs/scale-out.md#placement). A resume goes only to a node that answered that it
        sees the source's `codex_home/sessions` (the source's own node answers with its end);
        when none of those has a free slot, the nodes not asked yet are asked at once."""
        key = (plan.batch_id, plan.job_id, plan.step_id)
        self._placed.pop(key, None)
        self._holds.pop(key, None)
        now = time.monotonic()
        for k in [k for k, (_, at) in self._placed.items() if now - at > RESERVATION]:
            del self._placed[k]
        usable = sorted((n for n in self._nodes.values() if n.usable), key=lambda n: n.label)
        path = resume_sessions(plan)
        pool = usable
        if path is not None:
            pool, unknown, refused = [], [], []
            for n in usable:
                seen = n.sees.get(path)
                if seen is None or (not seen[0] and now - seen[1] > RECHECK):
                    unknown.append(n.label)
                elif seen[0]:
                    pool.append(n)
                else:
                    refused.append(n.label)
            node = self._pick(pool)
            if node is None:
                if unknown:
                    self._probe(path)
                    self._holds[key] = path
                    return Hold(f"asking Ray node(s) {', '.join(unknown)} whether they see "
                                f"the resume source {path}", PROBE_WAIT)
                if pool:
                    self._holds[key] = SLOT
                    return Hold(f"waiting for a free {self.slots_resource} on a Ray node that "
                                f"can see the resume source {path} "
                                f"({', '.join(n.label for n in pool)})", RECHECK)
                self._holds[key] = None
                return Hold(f"waiting for a Ray node that can see the resume source {path} "
                            f"(not visible from: {', '.join(refused) or 'no live node'}; "
                            "docs/scale-out.md#placement)", RECHECK)
        else:
            node = self._pick(pool)
        if node is None:
            self._holds[key] = SLOT
            return Hold(f"waiting for a free {self.slots_resource} on a live Ray node",
                        RECHECK)
        self._placed[key] = (node.label, now)
        return None

    def _free(self, node: _Node) -> int:
        reserved = sum(1 for label, _ in self._placed.values() if label == node.label)
        return node.slots_total - len(node.used) - reserved

    def _pick(self, pool: list[_Node]) -> _Node | None:
        """The node of `pool` with the most free slots; ties in turn (consecutive starts,
        e.g. a resume chain, spread over the nodes instead of packing one)."""
        free = {n.label: f for n in pool if (f := self._free(n)) > 0}
        if not free:
            return None
        best = max(free.values())
        ties = sorted(label for label, f in free.items() if f == best)
        self._turn += 1
        return self._nodes[ties[self._turn % len(ties)]]

    def _node_for(self, plan: AttemptPlan) -> tuple[_Node | None, str]:
        """The node `place` reserved for this plan (still usable), else the best one now;
        (None, why) when there is none."""
        placed = self._placed.pop((plan.batch_id, plan.job_id, plan.step_id), None)
        node = self._nodes.get(placed[0]) if placed else None
        if node is not None and node.usable:
            return node, ""
        path = resume_sessions(plan)
        pool = [n for n in self._nodes.values() if n.usable and (
            path is None or n.sees.get(path, (False, 0.0))[0])]
        node = self._pick(pool)
        if node is None:
            return None, (f"no live Ray node that can see {path} has a free "
                          f"{self.slots_resource}" if path else
                          f"no live Ray node with a free {self.slots_resource}")
        return node, ""

    async def run(self, plan: AttemptPlan, batch: BatchView, job: JobView, step: StepView,
                  claimed: tuple[str, Path]) -> AttemptView:
        self._ensure_watch()
        run_id, path = claimed
        live = self.live.setdefault(run_id, LiveAttempt(plan=plan, run_id=run_id, path=path))
        view = AttemptView(run_id=run_id, dir_name=path.name, path=path)
        state = AttemptState(batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id,
                             run_id=run_id, runner_id=self.runner_id, status="queued",
                             updated_at=utcnow())
        view.state = state
        node, why = self._node_for(plan)
        try:
            if node is None:
                return await self._local._spawn_failed(plan, view, state, why)
            node.used.add(run_id)
            self._where[run_id] = node.label
            slim = BatchView(meta=batch.meta.model_copy(update={"jobs": [job.spec]}),
                             jobs={job.job_id: job}, closed=batch.closed)
            payload = pickle.dumps((plan, slim, job, step, claimed))
            try:
                await self._call(node.agent.start.remote(payload), CALL_TIMEOUT * 3)
            except Exception as exc:
                cur = await asyncio.to_thread(load_attempt, path)
                if cur.meta is None:  # never reached the node: nothing can be running
                    return await self._local._spawn_failed(
                        plan, view, state, f"node {node.label}: {_short(exc)}")
            if live.cancel_requested.is_set():
                node.agent.cancel.remote(run_id, live.cancel_reason)
            return await self._follow(plan, view, node.label,
                                      list(step.spec.artifacts_expected))
        finally:
            self.live.pop(run_id, None)
            self._where.pop(run_id, None)
            if node is not None:
                node.used.discard(run_id)
                self._slot_freed()

    async def adopt(self, plan: AttemptPlan, view: AttemptView, spec_artifacts: list[str]
                    ) -> AttemptView:
        """An attempt a previous engine left in flight: its node agent holds it (or adopts it
        on its next status call); follow it to its end."""
        self._ensure_watch()
        label = (view.meta.environment_snapshot.node if view.meta else None) or ""
        self.live[view.run_id] = LiveAttempt(plan=plan, run_id=view.run_id, path=view.path)
        self._where[view.run_id] = label
        node = self._nodes.get(label)
        if node is not None:
            node.used.add(view.run_id)
        try:
            return await self._follow(plan, view, label, spec_artifacts)
        finally:
            self.live.pop(view.run_id, None)
            self._where.pop(view.run_id, None)
            if node is not None:
                node.used.discard(view.run_id)
                self._slot_freed()

    # ------------------------------------------------------------ following
    async def _follow(self, plan: AttemptPlan, view: AttemptView, label: str,
                      artifacts: list[str]) -> AttemptView:
        """Until the attempt's files say it ended (or it is lost): its node's `ended`
        long-poll wakes us at the end, its state.json is re-read every POLL for the engine's
        index."""
        thread: str | None = view.thread_id
        ev = self._ends.setdefault(view.run_id, asyncio.Event())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), POLL)
                ev.clear()
                view, changed = await asyncio.to_thread(self._reload, plan, view, thread)
                if view.terminal:
                    self._emit(plan, view)
                    return view
                if changed:
                    thread = view.thread_id or thread
                    self._emit(plan, view)
                node = self._nodes.get(label)
                if node is not None and node.alive and view.run_id in node.running:
                    continue  # its agent holds it (as of its last status)
                if self._stale(view):
                    if (view.path / EXIT_CODE).exists():
                        # it ended while no agent watched it (its node is gone): conclude it
                        # here from its files, with the local runner's own code
                        if view.state is not None:
                            view.state = view.state.model_copy(update={"pid": None})
                        return await self._local.adopt(plan, view, artifacts)
                    view = await asyncio.to_thread(self._finalize_lost, plan, view, label)
                    self._emit(plan, view)
                    return view
        finally:
            self._ends.pop(view.run_id, None)

    async def _ends_loop(self, node: _Node) -> None:
        """One pending `ended` call per node: wakes the followers of the attempts that ended
        there. A hint only: followers read the files every POLL regardless."""
        epoch, seq = 0.0, -1
        while not self._closed and node.alive and self._nodes.get(node.label) is node:
            try:
                r = await self._call(node.agent.ended.remote(epoch, seq, ENDED_WAIT),
                                     ENDED_WAIT + CALL_TIMEOUT)
            except Exception:
                await asyncio.sleep(POLL)
                continue
            epoch, seq = r["epoch"], r["seq"]
            self._remember(node, r.get("sees") or {})  # before its follower hears the end
            for run_id in r["ended"]:
                if (ev := self._ends.get(run_id)) is not None:
                    ev.set()

    def _reload(self, plan: AttemptPlan, view: AttemptView, thread: str | None
                ) -> tuple[AttemptView, bool]:
        """The attempt's files again, and whether its state changed (blocking: one thread
        hop per look). current.json is rewritten when it ended or its thread became known:
        the engine is its single writer."""
        new = load_attempt(view.path)
        old = view.state
        if new.state is None:
            return view, False
        if new.terminal or (new.thread_id and new.thread_id != thread):
            update_current(self.layout, plan.batch_id, plan.job_id)
        return new, (old is None or new.state.updated_at != old.updated_at
                     or new.state.status != old.status)

    def _stale(self, view: AttemptView) -> bool:
        """No heartbeat for lost_after: no agent watches it (with no exit code as well, the
        attempt is lost)."""
        st = view.state
        if st is None:
            return False
        beat = st.last_heartbeat_at or st.updated_at
        return (utcnow() - beat).total_seconds() > self.lost_after

    def _finalize_lost(self, plan: AttemptPlan, view: AttemptView, label: str) -> AttemptView:
        """runner_lost, written by the engine under the job lock (a late agent write of a
        terminal state loses to this one, or this one to it: one terminal status, ever)."""
        st = read_model(view.path / STATE, AttemptState) or view.state
        assert st is not None
        view.state = record_runner_lost(
            self.layout, plan.batch_id, plan.job_id, view.path, st,
            f"Ray node {label or '?'} lost: no heartbeat for {self.lost_after:g}s and no "
            "exit code")
        return view

    def _emit(self, plan: AttemptPlan, view: AttemptView) -> None:
        self.on_change(plan.batch_id, plan.job_id, plan.step_id, view)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
