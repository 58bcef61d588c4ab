"""Admission: runner health, drain, resources, start pauses (moved from loop.py)."""


class Admission:
    def admission_reasons(self, mono: float | None = None) -> list[str]:
        """Why this runner starts nothing new right now, one sentence each (empty: it may
        start work). `mono`: the `time.monotonic()` reading to judge health.json's age at
        (default: now). Needs `setup()` first."""
        assert self.config is not None
        out: list[str] = []
        draining, why = self._drain
        if draining:
            out.append(f"draining: {why}")
        out.extend(self._resource_problems)
        if self._cred is not None:
            out.extend(self._cred.reasons())
        out.extend(pause_message(p) for p in active_pauses(self._pauses, utcnow()))
        if self.writes.problem:
            out.append(self.writes.problem)
        stale_after = self.config.runner_health.stale_after_seconds
        mono = time.monotonic() if mono is None else mono
        if self._health_ok_at is not None and mono - self._health_ok_at > stale_after:
            out.append(f"health.json not written for over {stale_after:g}s"
                       + (f" ({self._health_error})" if self._health_error else "")
                       + ": other harnesses would take this runner for dead")
        return out

    def sample_health(self) -> None:
        """Blocking part of a health tick: drain file, disk, memory, peers' health, pauses,
        system notes, and this runner's health.json written (a failed write is kept in
        `health_error`, not raised). The loop runs it in a thread; callable before `serve`."""
        assert self.config is not None
        self._drain = drain_state(self.layout, self.config, self.runner_id)
        self._resources = sample_resources(self.layout.root)
        self._resource_problems = resource_problems(self._resources, self.config.limits)
        self.writes.probe(self.layout.runs)  # space came back: starts resume
        try:
            self.write_health()
            self._health_ok_at = time.monotonic()
            self._health_error = None
        except OSError as exc:
            self._health_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.warning("cannot write runner health: %s", self._health_error)
        self._peers = all_health(self.layout)
        self._pauses = self._merge_pauses(read_pauses(self.layout))
        self._notes = system_notes(self.layout, self.config)
        if self._health_error:
            self._notes.append(SystemNote(
                kind="health_unwritable", runner_id=self.runner_id,
                message=f"runner {self.runner_id} cannot write its health.json "
                        f"({self._health_error})"))
        if self.writes.problem:
            self._notes.append(SystemNote(kind="write_error", runner_id=self.runner_id,
                                          message=f"runner {self.runner_id}: "
                                                  f"{self.writes.problem}"))

    def _after_sample(self) -> None:
        """Loop side of a health tick: report admission changes, wake the scheduler."""
        reasons = self.admission_reasons()
        if reasons == self._admission_reported:
            return
        was_blocked = bool(self._admission_reported)
        self._admission_reported = reasons
        if reasons:
            self._emit(EngineEvent(
                "admission_blocked", utcnow(), status="paused",
                detail=f"runner {self.runner_id} starts no new attempts: " + "; ".join(reasons),
                data={"runner_id": self.runner_id, "reasons": reasons}))
        elif was_blocked:
            self._emit(EngineEvent("admission_resumed", utcnow(), status="accepting",
                                   detail=f"runner {self.runner_id} accepts work again",
                                   data={"runner_id": self.runner_id}))
        self._dirty.update(self.index.batches)  # notes appear in every scoreboard
        self._poke()

    def health_tick(self) -> None:
        """One health tick in full: `sample_health`, then report an admission change and
        wake the scheduler. Blocks (disk, files): the loop itself samples in a thread."""
        self.sample_health()
        self._after_sample()

    async def _health_loop(self) -> None:
        assert self.config is not None
        interval = self.config.runner_health.interval_seconds
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sample_health)
            self._after_sample()

    def write_health(self, stopped: bool = False) -> None:
        """Write runners/<runner_id>/health.json now. Raises OSError when it cannot."""
        res = self._resources
        draining, why = self._drain
        if self._stopping and not draining:
            draining, why = True, "engine stopping"
        problems = list(self._resource_problems)
        if self.writes.problem:
            problems.append(self.writes.problem)
        health = RunnerHealth(
            runner_id=self.runner_id, host=socket.gethostname(), pid=os.getpid(),
            started_at=self.started_at, last_seen_at=utcnow(),
            capacity=self.capacity if self.config else 0, running=len(self.tasks),
            effective_capacity=self.effective_capacity if self.config else None,
            draining=draining, disk_free_bytes=res.disk_free_bytes,
            disk_free_inodes=res.disk_free_inodes,
            memory_available_bytes=res.memory_available_bytes,
            load_1m=res.load_1m, codex_cli_version=self.codex.version if self.codex else None,
            phh_version=__version__, drain_reason=why,
            accepting_work=not (draining or problems or stopped), problems=problems,
            interval_seconds=self.config.runner_health.interval_seconds if self.config else None,
            stopped_at=utcnow() if stopped else None,
            nodes=[RunnerNode(label=n.label, node_id=n.node_id, alive=n.alive,
                              slots_total=n.slots_total, slots_used=n.slots_used,
                              agents_running=n.agents_running, last_seen_at=n.last_seen,
                              error=n.error)
                   for n in (self.runner.nodes() if self.runner is not None else [])],
        )
        atomic_write_json(self.layout.runner_health(self.runner_id), health)

    async def _credential_loop(self) -> None:
        """Notice the credential file change promptly while a pause or a token-refresh pilot
        waits on it (a stat every 0.25 s), else every few seconds; report and reschedule."""
        assert self._cred is not None
        shown: str | None = None
        while True:
            await asyncio.sleep(0.25 if self._cred.watching else 2.0)
            changed = self._cred.poll()
            self._after_sample()  # reports a pause starting or lifting (no-op otherwise)
            held = self._cred.holding_note()
            if changed or held != shown:
                shown = held
                self._dirty.update(self.index.batches)
                self._poke()

    def _credential_notes(self) -> list[SystemNote]:
        cred = self._cred
        if cred is None:
            return []
        out = [SystemNote(kind="credential_paused", runner_id=self.runner_id, message=r,
                          since=cred.paused.since if cred.paused else None)
               for r in cred.reasons()]
        held = cred.holding_note()
        if held:
            out.append(SystemNote(kind="credential_refresh", runner_id=self.runner_id,
                                  message=held))
        return out

    def _pause_end(self, now: datetime) -> datetime | None:
        """When the last active start pause with a known end is over (None: no such pause)."""
        ends = [p.until for p in active_pauses(self._pauses, now) if p.until is not None]
        return max(ends) if ends else None

    def hold_starts(self, pause: StartPause) -> None:
        """Apply a start pause just written with `pauses.set_pause` at once (other engines on
        the root read it on their next health tick): report it and stop starting."""
        self._pauses = [p for p in self._pauses if p.name != pause.name] + [pause]
        self._after_sample()

    def _merge_pauses(self, on_disk: list[StartPause]) -> list[StartPause]:
        """The pauses a health tick read, plus one this engine set while the read was under
        way (the tick reads off the loop): without it the next starts could slip through
        until the following tick. A pause deleted on disk (ended early by hand) is dropped
        once it is older than that race."""
        assert self.config is not None
        now = utcnow()
        race = 2 * self.config.runner_health.interval_seconds
        by_name = {p.name: p for p in on_disk}
        for p in list(self._pauses):
            disk = by_name.get(p.name)
            if (disk is None or disk.set_at < p.set_at) and \
                    (now - p.set_at).total_seconds() < race:
                by_name[p.name] = p
        return list(by_name.values())

    def _after_outcome(self, st: AttemptState) -> None:
        """What one attempt's end teaches about the model API: a usage limit pauses every
        start on the root; HTTP 429 halves this runner's concurrency, a success adds one."""
        assert self.config is not None
        fc = st.failure_class
        if fc == "usage_limited":
            lim = self.config.limits
            try:
                pause = note_usage_limit(
                    self.layout, " ".join(st.errors), set_by=f"runner:{self.runner_id}",
                    base_seconds=lim.usage_limit_pause_seconds,
                    max_seconds=lim.usage_limit_pause_max_seconds)
            except OSError as exc:  # unwritable: this engine still pauses itself
                log.warning("cannot record the usage-limit pause: %s", exc)
                return
            self.hold_starts(pause)
        elif fc == "rate_limited":
            before = self.effective_capacity
            self._aimd = max(1, before // 2)
            self._emit(EngineEvent(
                "concurrency", utcnow(), status="lowered",
                detail=f"effective concurrency {self.effective_capacity}/{self.capacity} "
                       f"(halved after HTTP 429 rate limit)",
                data={"effective": self.effective_capacity, "capacity": self.capacity}))
            self._dirty.update(self.index.batches)
        elif st.status == "succeeded":
            if self._aimd is not None:
                self._aimd += 1
                if self._aimd >= self.capacity:
                    self._aimd = None
                self._emit(EngineEvent(
                    "concurrency", utcnow(), status="raised",
                    detail=f"effective concurrency {self.effective_capacity}/{self.capacity}"
                           + (" (back to the configured cap)" if self._aimd is None else ""),
                    data={"effective": self.effective_capacity, "capacity": self.capacity}))
                self._dirty.update(self.index.batches)
            if any(p.name == USAGE_LIMIT for p in self._pauses) and not any(
                    p.name == USAGE_LIMIT for p in active_pauses(self._pauses, utcnow())):
                # the limit is over: the next one starts a fresh exponential streak
                with contextlib.suppress(OSError):
                    clear_pause(self.layout, USAGE_LIMIT)
                self._pauses = [p for p in self._pauses if p.name != USAGE_LIMIT]
