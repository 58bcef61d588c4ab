"""A stand-in for the ChatGPT token endpoint Codex refreshes against, for auth tests.

Codex sends `POST {"client_id", "grant_type": "refresh_token", "refresh_token"}` (JSON) to
`CODEX_REFRESH_TOKEN_URL_OVERRIDE` when that is set. Like the real endpoint, refresh tokens are
single-use: the current one is answered with a fresh access token (an unsigned JWT, `alg:
none`, valid for an hour), id token and refresh token; a spent one with
`401 {"error": {"code": "refresh_token_reused"}}`; an unknown one with `refresh_token_invalidated`.

`auth_json()` writes the first credential file a user would have after `codex login`, with an
access token that may already be expired. `valid_access(token)` is what the model stand-in asks
before it answers: only tokens this server issued (and not expired) pass.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

ACCOUNT_ID = "acct-phh-test"


def _b64(obj: dict[str, Any]) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT (`alg: none`): Codex reads claims without checking a signature."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.sig"


class TokenServer:
    """Rotating refresh tokens; counts requests; `delay` seconds before each answer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # {"at", "outcome"} (never the token)
        self.current_refresh = "rt-" + secrets.token_hex(16)
        self.spent: set[str] = set()
        self.access: dict[str, float] = {}  # issued access token -> exp (epoch seconds)
        self.all_tokens: set[str] = {self.current_refresh}
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self.url = ""

    # -- tokens ------------------------------------------------------------------------------
    def _new_access(self, exp: float) -> str:
        tok = jwt({"exp": int(exp), "iat": int(time.time()), "sub": "user-phh",
                   "nonce": secrets.token_hex(8),
                   "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT_ID}})
        self.access[tok] = exp
        self.all_tokens.add(tok)
        return tok

    def _id_token(self) -> str:
        tok = jwt({"exp": int(time.time()) + 3600, "email": "user@example.com",
                   "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT_ID,
                                                   "chatgpt_plan_type": "pro"}})
        self.all_tokens.add(tok)
        return tok

    def auth_json(self, *, expired: bool = True, last_refresh: datetime | None = None
                  ) -> dict[str, Any]:
        """A signed-in user's auth.json whose access token expired an hour ago (or is valid)."""
        exp = time.time() + (-3600 if expired else 3600)
        with self.lock:
            access = self._new_access(exp)
            id_token = self._id_token()
        when = last_refresh or (datetime.now(UTC) - timedelta(days=1))
        return {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {"id_token": id_token, "access_token": access,
                       "refresh_token": self.current_refresh, "account_id": ACCOUNT_ID},
            "last_refresh": when.isoformat().replace("+00:00", "Z"),
        }

    def spend_current(self) -> None:
        """As if another machine refreshed: the file's refresh token is now spent."""
        with self.lock:
            self.spent.add(self.current_refresh)
            self.current_refresh = "rt-" + secrets.token_hex(16)
            self.all_tokens.add(self.current_refresh)

    def valid_access(self, token: str | None) -> bool:
        with self.lock:
            exp = self.access.get(token or "")
        return exp is not None and exp > time.time()

    def count(self, outcome: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if outcome is None or r["outcome"] == outcome)

    # -- HTTP --------------------------------------------------------------------------------
    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        rt = body.get("refresh_token")
        with self.lock:
            if rt == self.current_refresh and rt not in self.spent:
                self.spent.add(rt)
                self.current_refresh = "rt-" + secrets.token_hex(16)
                self.all_tokens.add(self.current_refresh)
                out = (200, {"access_token": self._new_access(time.time() + 3600),
                             "id_token": self._id_token(),
                             "refresh_token": self.current_refresh})
                outcome = "ok"
            elif rt in self.spent:
                out = (401, {"error": {"code": "refresh_token_reused",
                                       "message": "refresh token already used"}})
                outcome = "reused"
            else:
                out = (401, {"error": {"code": "refresh_token_invalidated"}})
                outcome = "invalid"
            self.requests.append({"at": time.time(), "outcome": outcome})
        return out

    def start(self) -> TokenServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                if server.delay:
                    time.sleep(server.delay)
                status, payload = server.answer(body if isinstance(body, dict) else {})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}/oauth/token"
        threading.Thread(target=httpd.serve_forever, name="token-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
