"""The runner-local Codex credential: what it is, whether its token is stale, who changed it,
and the pause on a credential that needs a new sign-in (issue 18).

Never reads out or writes a token: a credential is known here only by its kind, its expiry
and a *fingerprint* (sha256 over the file's inode, mtime, size, `last_refresh` and a sha256 of
the refresh token), enough to tell "the file changed" from "the same file".

Facts about Codex 0.169.0 this relies on (measured with the real binary and a local token
server, and read in codex-rs/login/src/auth/manager.rs, `is_stale_for_proactive_refresh`):
- Codex refreshes before a request when the access token's JWT `exp` is within 5 minutes
  (exp now+4 min: one refresh; now+6 min: none), or, when `exp` is unreadable, when
  `last_refresh` is more than 8 days old.
- Refresh tokens are single-use and Codex does not serialise refreshes across processes: N
  agents started together on a stale token send N refreshes (the losers recover by re-reading
  the file, or fail "…refresh token was already used. Please log out and sign in again.").
- Codex writes a refreshed auth.json through phh's symlink (temp + rename at the target).

Pauses live in `runs/_system/credential_pauses/<sha256(source)[:16]>.json`, one per source
file, so every engine on the root sees them. `pause_reason`/`lift_if_changed` are the small
surface a shared pause mechanism can wrap.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field

from ..derive.readiness import (
    CREDENTIAL_CHANGED as CREDENTIAL_CHANGED,  # re-exported for the runner
)
from ..derive.readiness import SIGN_IN_AGAIN as SIGN_IN_AGAIN  # re-exported for the runner
from ..models.common import Id, Record, utcnow
from ..store.documents import loads_json
from ..store.files import atomic_write_json, read_model
from ..store.paths import Layout

#: Codex 0.169's proactive refresh window before the access token's `exp` (measured).
REFRESH_WINDOW = timedelta(minutes=5)
#: Codex's TOKEN_REFRESH_INTERVAL: the rule when `exp` is unreadable.
REFRESH_INTERVAL = timedelta(days=8)
SECRET_ENV = ("CODEX_API_KEY", "OPENAI_API_KEY")
PAUSE_DIR = "credential_pauses"

CredentialKind = Literal["api_key_env", "chatgpt", "api_key", "none", "unreadable"]


class _CodexLike(Protocol):
    credential_dir: str | None


class _SettingsLike(Protocol):
    @property
    def codex(self) -> _CodexLike: ...


class CredentialPause(Record):
    """New starts that use `source` wait until its fingerprint differs from `fingerprint`."""

    source: str = Field(description="the credential file (resolved path)")
    fingerprint: str = Field(description="sha256 fingerprint of the source when paused")
    since: datetime
    reason: str
    runner_id: str | None = None
    batch_id: Id | None = None
    job_id: Id | None = None
    step_id: Id | None = None
    run_id: Id | None = None


# ----------------------------------------------------------------------------- the source
def env_key_set() -> bool:
    """An API key in the environment reaches Codex directly; no auth.json is linked."""
    return any(os.environ.get(k) for k in SECRET_ENV)


def source_path(settings: _SettingsLike) -> Path:
    """The credential file the runner links into every attempt's CODEX_HOME (resolved, so a
    user's own symlinked ~/.codex/auth.json names its real file)."""
    cred_dir = settings.codex.credential_dir
    base = Path(cred_dir).expanduser() if cred_dir else Path.home() / ".codex"
    return (base / "auth.json").resolve()


def read_auth(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None (missing, unreadable, not a JSON object)."""
    try:
        # Codex writes this file: a lone surrogate in it is its business, not refused here
        data = loads_json(path.read_bytes(), allow_surrogates=True)  # never RecursionError
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def kind_of(data: dict[str, Any] | None) -> CredentialKind:
    if data is None:
        return "unreadable"
    tokens = data.get("tokens")
    if isinstance(tokens, dict) and tokens.get("refresh_token"):
        return "chatgpt"
    if data.get("OPENAI_API_KEY"):
        return "api_key"
    return "unreadable"


def jwt_exp(token: Any) -> datetime | None:
    """The `exp` claim of a JWT (payload base64url-decoded, signature not checked), else None."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = loads_json(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)),
                            allow_surrogates=True)
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        return datetime.fromtimestamp(exp, UTC)
    except (ValueError, binascii.Error, OverflowError, OSError):
        return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        # Codex writes nanoseconds (…:50.083326006Z): keep microseconds
        head, dot, rest = value.partition(".")
        if not dot:
            return None
        digits = "".join(c for c in rest if c.isdigit())
        try:
            t = datetime.fromisoformat(f"{head}.{digits[:6]}+00:00")
        except ValueError:
            return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def staleness(data: dict[str, Any] | None, now: datetime | None = None) -> tuple[bool, str]:
    """(stale, why) by Codex's own rule: the next Codex start would refresh the token."""
    now = now or utcnow()
    tokens = data.get("tokens") if data else None
    if not isinstance(tokens, dict) or not tokens.get("refresh_token"):
        return False, "not a ChatGPT sign-in"
    exp = jwt_exp(tokens.get("access_token"))
    if exp is not None:
        left = (exp - now).total_seconds()
        if exp <= now + REFRESH_WINDOW:
            return True, (f"access token expired {-left:.0f}s ago" if left <= 0 else
                          f"access token expires in {left:.0f}s (Codex refreshes within "
                          f"{REFRESH_WINDOW.total_seconds() / 60:g} min)")
        return False, f"access token valid for {left / 3600:.1f} h"
    last = _parse_time(data.get("last_refresh") if data else None)
    if last is None:
        return False, "access token expiry unreadable and no last_refresh"
    age = now - last
    if age > REFRESH_INTERVAL:
        return True, f"last refresh {age.days} days ago (Codex refreshes after 8)"
    return False, f"last refresh {age.total_seconds() / 86400:.1f} days ago"


def fingerprint(path: Path) -> str | None:
    """sha256 over inode, mtime, size, `last_refresh` and sha256(refresh token); None when
    the file is missing. Changes whenever Codex (or `codex login`) rewrites the file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    data = read_auth(path) or {}
    tokens = data.get("tokens") if isinstance(data.get("tokens"), dict) else {}
    rt = tokens.get("refresh_token") if isinstance(tokens, dict) else None
    rt_hash = hashlib.sha256(rt.encode()).hexdigest() if isinstance(rt, str) else "-"
    parts = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{data.get('last_refresh')}:{rt_hash}"
    return hashlib.sha256(parts.encode()).hexdigest()


def credential_status(settings: _SettingsLike) -> tuple[CredentialKind, bool, str]:
    """For `phh doctor`: (kind, stale, detail). Never any token content.

    kind: `api_key_env` (OPENAI_API_KEY/CODEX_API_KEY set; Codex gets it by environment),
    `chatgpt` (auth.json with tokens), `api_key` (auth.json with a key), `none` (no file),
    `unreadable`. stale: the next Codex start would refresh the token (see module doc).
    """
    if env_key_set():
        return "api_key_env", False, "API key from the environment"
    return status_of(source_path(settings))


def status_of(path: Path) -> tuple[CredentialKind, bool, str]:
    """`credential_status` of one auth.json path, environment aside."""
    if not path.exists():
        return "none", False, f"no {path}: sign in with `codex login` or set OPENAI_API_KEY"
    data = read_auth(path)
    kind = kind_of(data)
    if kind == "unreadable":
        return kind, False, f"{path} is not a Codex credential file"
    if kind == "api_key":
        return kind, False, f"API key in {path}"
    stale, why = staleness(data)
    return kind, stale, f"ChatGPT sign-in in {path}: {why}"


# ----------------------------------------------------------------------------- the pause
def pause_path(layout: Layout, source: Path) -> Path:
    key = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    return layout.system / PAUSE_DIR / f"{key}.json"


def read_pause(layout: Layout, source: Path) -> CredentialPause | None:
    return read_model(pause_path(layout, source), CredentialPause)


def pause(layout: Layout, source: Path, fp: str, reason: str, **where: str | None
          ) -> CredentialPause:
    """Record that `source` (as of fingerprint `fp`) needs a new sign-in."""
    rec = CredentialPause(source=str(source), fingerprint=fp, since=utcnow(), reason=reason,
                          **where)
    path = pause_path(layout, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, rec)
    return rec


def lift_if_changed(layout: Layout, source: Path) -> CredentialPause | None:
    """The pause still in force for `source`, or None; a pause whose source has changed
    since (the user signed in again) is removed."""
    rec = read_pause(layout, source)
    if rec is None:
        return None
    if fingerprint(source) != rec.fingerprint:
        with contextlib.suppress(FileNotFoundError):
            pause_path(layout, source).unlink()
        return None
    return rec


def pause_reason(rec: CredentialPause) -> str:
    return (f"credential {rec.source} needs a new sign-in ({rec.reason}); new attempts wait "
            f"until it changes: {SIGN_IN_AGAIN}")


AuthDecision = Literal["changed", "paused", "no_source"]


def after_auth_failure(layout: Layout, source: Path | None, start_fp: str | None,
                       reason: str, **where: str | None) -> AuthDecision:
    """An attempt ended `auth`. `changed`: the source is not what the attempt started with
    (another process won the refresh): retry at once. `paused`: same file, so it needs a new
    sign-in; new starts pause. `no_source`: no file to watch (API key from the environment)."""
    if source is None:
        return "no_source"
    now_fp = fingerprint(source)
    if now_fp is None:
        return "no_source"
    if start_fp is not None and now_fp != start_fp:
        return "changed"
    pause(layout, source, now_fp, reason, **where)
    return "paused"


# ----------------------------------------------------------------------------- the engine gate
@dataclass(slots=True)
class _Seen:
    key: tuple[int, int, int] | None
    fp: str | None
    stale: bool
    why: str


class CredentialGate:
    """What the scheduler asks before starting attempts that use the runner's credential file.

    - paused (a spent credential, see `pause`): no new starts until the file changes;
    - stale (the next Codex would refresh): one attempt starts alone (the *pilot*) and the
      rest wait until the file changes or the pilot ends: one refresh per wave, not N. One
      pilot per version of the file: if it ended without a refresh, the rest start anyway.
    Reads the file only when its stat changes, so asking on every scheduler pass is cheap.
    """

    def __init__(self, layout: Layout, settings: _SettingsLike) -> None:
        self.layout = layout
        self.source = source_path(settings)
        self._seen = _Seen(None, None, False, "")
        self.pilot: str | None = None
        self._pilot_fp: str | None = None
        #: the file version a pilot already ran on: a Codex that did not refresh it (e.g. a
        #: provider that does not use the sign-in) must not serialise every later wave
        self._piloted_fp: str | None = None
        self._want_pilot = False
        self.paused: CredentialPause | None = None

    @property
    def active(self) -> bool:
        """Attempts get this file (no API key in the environment, the file exists)."""
        return not env_key_set() and self._seen.key is not None

    def poll(self) -> bool:
        """Re-stat the source (and the pause record); True when anything changed."""
        try:
            st = os.stat(self.source)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        changed = key != self._seen.key
        if changed:
            data = read_auth(self.source) if key else None
            stale, why = staleness(data)
            self._seen = _Seen(key, fingerprint(self.source) if key else None, stale, why)
        was = self.paused
        self.paused = lift_if_changed(self.layout, self.source) if key else None
        return changed or (was is None) != (self.paused is None)

    def reasons(self) -> list[str]:
        """Admission reasons (empty: starts allowed) for the engine's `admission_reasons`."""
        if self.paused is not None and not env_key_set():
            return [pause_reason(self.paused)]
        return []

    def admit(self, free: int) -> int:
        """Free slots after the wave rule (call once per scheduler pass, after `poll`)."""
        self._want_pilot = False
        if free <= 0 or not self.active or self.paused is not None:
            return free
        if self.pilot is not None:
            if self._seen.fp == self._pilot_fp:
                return 0  # the pilot is refreshing: the others wait for the file to change
            self.pilot = None  # the file changed: released
        if self._seen.stale and self._seen.fp != self._piloted_fp:
            self._want_pilot = True
            return min(free, 1)
        return free

    def started(self, run_id: str) -> None:
        if self._want_pilot and self.pilot is None:
            self.pilot, self._pilot_fp = run_id, self._seen.fp
            self._piloted_fp = self._seen.fp
            self._want_pilot = False

    def ended(self, run_id: str) -> None:
        if run_id == self.pilot:
            self.pilot = None

    @property
    def watching(self) -> bool:
        """Poll often: a pilot waits on a refresh, or a pause waits on a new sign-in."""
        return self.pilot is not None or self.paused is not None

    def holding_note(self) -> str | None:
        if self.pilot is not None:
            return (f"token refresh: {self.pilot} starts alone on a stale credential "
                    f"({self._seen.why}); the rest start once {self.source} changes")
        return None
