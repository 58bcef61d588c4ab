"""A start pause: `runs/_system/pauses/<name>.json` (see phh_engine/store/pauses.py)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .common import Id, Record


class StartPause(Record):
    """While `until` is in the future (or `until` is null: until cleared), no engine on the
    root starts a new attempt. Running attempts go on. One file per pause name, so unrelated
    causes (a usage limit, a spent credential) are set and cleared independently."""

    name: Id = Field(description="what the pause is for, e.g. usage_limit; the file's name")
    reason: str = Field(description="short human reason shown after the time, e.g. 'usage limit'")
    until: datetime | None = Field(default=None,
                                   description="end of the pause (UTC); null: until cleared")
    since: datetime = Field(description="when this pause (streak) began")
    set_at: datetime = Field(description="last time it was set or extended")
    set_by: str = Field(description="who set it, e.g. runner:local")
    reset_known: bool = Field(
        default=False, description="until is a reset time the model API gave (else a guess)")
    streak: int = Field(default=1, ge=1, description="pauses in a row without a success between")
    detail: str | None = Field(default=None, description="the error text that caused it")
