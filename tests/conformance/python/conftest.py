"""Fixtures for the Parlor conformance suite (Python SDK side).

Every test gets fresh `parlor serve` processes started on port 0 with a temp TOML
config; the fixture parses the `listening on ws://127.0.0.1:PORT` line and kills the
process afterwards. The SDK under test is the real `metered-realtime` package.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_asyncio

from metered_realtime import (
    Connected,
    Direct,
    Disconnected,
    GoingAway,
    Message,
    Presence,
    ServerError,
    SignallingClient,
    StateChange,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]

WAIT = 20.0  # max seconds for any single async wait
LISTEN_RE = re.compile(r"^listening on wss?://127\.0\.0\.1:(\d+)\s*$")

DEV_KEY = "pk_test_x"
ADMIN_SECRET = "adm_secret"
JWT_KID = "main"
JWT_SECRET = "sk_test_secret_0123456789"  # >= 16 bytes: see FINDINGS.md #1

# Keys defined in the base config (all in account "acme" unless noted).
KEY_ALL = "pk_live_all"  # every channel, every action
KEY_ROOMS = "pk_live_rooms"  # channels room-* only
KEY_NOPUB = "pk_live_nopub"  # every channel, no publish
KEY_ICE = "pk_live_ice"  # welcome.metadata carries iceServers
KEY_SUSPENDED = "pk_live_susp"  # account "frozen" (suspended)
KEY_TINY = "pk_live_tiny"  # account "tiny" (max_connections = 1)
KEY_QUOTA = "pk_live_quota"  # account "quota" (message_quota = 3)
ICE_URL = "stun:stun.example.org:3478"
TURN_URL = "turn:turn.example.org:3478?transport=udp"

ALL_ACTIONS = '["subscribe", "publish", "presence", "send"]'

BASE_ACCOUNTS_AND_KEYS = f"""
[[accounts]]
id = "acme"
max_connections = 100

[[accounts]]
id = "frozen"
suspended = true

[[accounts]]
id = "tiny"
max_connections = 1

[[accounts]]
id = "quota"
message_quota = 3
quota_window_secs = 600

[[keys]]
key = "{KEY_ALL}"
account = "acme"
channels = ["*"]
actions = {ALL_ACTIONS}

[[keys]]
key = "{KEY_ROOMS}"
account = "acme"
channels = ["room-*"]
actions = {ALL_ACTIONS}

[[keys]]
key = "{KEY_NOPUB}"
account = "acme"
channels = ["*"]
actions = ["subscribe", "presence", "send"]

[[keys]]
key = "{KEY_ICE}"
account = "acme"
channels = ["*"]
actions = {ALL_ACTIONS}
metadata = {{ iceServers = [{{ urls = "{ICE_URL}" }}, {{ urls = ["{TURN_URL}"], username = "u1", credential = "c1" }}] }}

[[keys]]
key = "{KEY_SUSPENDED}"
account = "frozen"
channels = ["*"]
actions = {ALL_ACTIONS}

[[keys]]
key = "{KEY_TINY}"
account = "tiny"
channels = ["*"]
actions = {ALL_ACTIONS}

[[keys]]
key = "{KEY_QUOTA}"
account = "quota"
channels = ["*"]
actions = {ALL_ACTIONS}

[[secrets]]
kid = "{JWT_KID}"
secret = "{JWT_SECRET}"
account = "acme"
"""


def parlor_bin() -> str:
    env = os.environ.get("PARLOR_BIN")
    if env:
        return env
    return str(REPO_ROOT / "target" / "debug" / "parlor")


def build_config(*, limits: dict[str, int] | None = None, echo_publisher: bool | None = None,
                 extra: str = "") -> str:
    lines = [f'admin_secret = "{ADMIN_SECRET}"']
    if echo_publisher is not None:
        lines.append(f"echo_publisher = {'true' if echo_publisher else 'false'}")
    if limits:
        lines.append("")
        lines.append("[limits]")
        for k, v in limits.items():
            lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n" + BASE_ACCOUNTS_AND_KEYS + extra


class ParlorServer:
    """One running `parlor serve` subprocess."""

    def __init__(self, workdir: Path, name: str, config_text: str, *, dev_key: bool = True,
                 port: int = 0) -> None:
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.stdout_lines: list[str] = []
        args = [parlor_bin(), "serve", "--listen", f"127.0.0.1:{port}",
                "--config", str(self.config_path)]
        if dev_key:
            args += ["--dev-key", DEV_KEY]
        self.args = args
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL)
        self.port = self._await_listening()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"

    def _await_listening(self) -> int:
        found: dict[str, int] = {}
        ready = threading.Event()

        def reader() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stdout_lines.append(line)
                m = LISTEN_RE.match(line)
                if m and "port" not in found:
                    found["port"] = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True, name=f"{self.name}-stdout").start()
        if not ready.wait(WAIT) or "port" not in found:
            self.kill()
            raise RuntimeError(
                f"parlor did not print 'listening on ws://127.0.0.1:PORT' within {WAIT}s "
                f"(exit={self.proc.returncode}, args={self.args}); stdout={self.stdout_lines!r}; "
                f"stderr (head)={self.stderr_path.read_text(errors='replace')[:1500]!r}"
            )
        return found["port"]

    def sigterm(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._stderr.close()

    def logs(self) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except OSError:
            err = ""
        return f"--- {self.name} stdout ---\n" + "\n".join(self.stdout_lines) + \
            f"\n--- {self.name} stderr (tail) ---\n" + err[-6000:]

    # ---- HTTP helpers (admin API / health) ----
    def http_request(self, method: str, path: str, *, auth: str | None = ADMIN_SECRET,
                     body: bytes | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.http + path, method=method, data=body)
        if auth is not None:
            req.add_header("Authorization", f"Bearer {auth}")
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:  # type: ignore[attr-defined]
            return e.code, e.read().decode("utf-8", "replace")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it; released before returning)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(args: list[str], port: int, what: str) -> subprocess.Popen:
    """Spawn `args` and wait (WAIT at most) until 127.0.0.1:`port` accepts TCP."""
    import socket

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() >= deadline:
                proc.kill()
                raise AssertionError(f"{what} did not start")
            time.sleep(0.05)


@pytest.fixture
def parlor_factory(tmp_path: Path, request: pytest.FixtureRequest):
    """Start extra servers: parlor_factory(config_text=None, dev_key=True, port=0)."""
    servers: list[ParlorServer] = []

    def start(config_text: str | None = None, *, dev_key: bool = True, port: int = 0,
              name: str | None = None) -> ParlorServer:
        srv = ParlorServer(tmp_path, name or f"parlor{len(servers)}",
                           config_text if config_text is not None else build_config(),
                           dev_key=dev_key, port=port)
        servers.append(srv)
        return srv

    yield start
    failed = getattr(request.node, "rep_call", None)
    for srv in servers:
        srv.kill()
        if failed is not None and failed.failed:
            print(srv.logs())


@pytest.fixture
def server(parlor_factory) -> ParlorServer:
    """A server with the base config + the dev key."""
    return parlor_factory()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------

def mint_token(*, ttl_secs: int | None = None, channels: list[str] | None = None,
               permissions: list[str] | None = None, peer_metadata: dict | None = None,
               metadata: dict | None = None, secret: str = JWT_SECRET,
               kid: str = JWT_KID) -> str:
    """Mint a JWT with `parlor token` (the server's own minting CLI)."""
    args = [parlor_bin(), "token", "--secret", secret, "--kid", kid]
    if ttl_secs is not None:
        args += [f"--ttl-secs={ttl_secs}"]
    for c in channels or []:
        args += ["--channel", c]
    for p in permissions or []:
        args += ["--permission", p]
    if peer_metadata is not None:
        args += ["--peer-metadata", json.dumps(peer_metadata)]
    if metadata is not None:
        args += ["--metadata", json.dumps(metadata)]
    out = subprocess.run(args, capture_output=True, timeout=WAIT)
    if out.returncode != 0:
        raise RuntimeError(f"parlor token failed rc={out.returncode}: {out.stderr!r}")
    token = out.stdout.decode().strip()
    assert token.count(".") == 2, f"parlor token did not print a JWT: {token!r}"
    return token


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def craft_jwt(claims: dict[str, Any], *, secret: str = JWT_SECRET, kid: str = JWT_KID) -> str:
    """Hand-rolled HS256 JWT (used where `parlor token` cannot express a claim set,
    e.g. an already-expired token)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = _b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def token_provider(token: str) -> Callable[[], Any]:
    async def provide() -> str:
        return token
    return provide


# ---------------------------------------------------------------------------
# SDK client helpers
# ---------------------------------------------------------------------------

class CapturingLogger:
    """SDK Logger that keeps every record; used to detect frames the SDK dropped as
    malformed (a server conformance failure the SDK would otherwise swallow)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[tuple[str, str, dict | None]] = []
        self._log = logging.getLogger(f"sdk.{name}")

    def _rec(self, level: str, msg: str, ctx: dict | None) -> None:
        self.records.append((level, msg, ctx))
        self._log.log(getattr(logging, level.upper()), "%s %r", msg, ctx or {})

    def debug(self, msg: str, ctx: dict | None = None) -> None:
        self._rec("debug", msg, ctx)

    def info(self, msg: str, ctx: dict | None = None) -> None:
        self._rec("info", msg, ctx)

    def warning(self, msg: str, ctx: dict | None = None) -> None:
        self._rec("warning", msg, ctx)

    def error(self, msg: str, ctx: dict | None = None) -> None:
        self._rec("error", msg, ctx)

    def malformed(self) -> list[tuple[str, str, dict | None]]:
        return [r for r in self.records
                if "malformed" in r[1] or "second welcome" in r[1] or "non-text" in r[1]]


@dataclass
class Recorder:
    """Records every event an emitter produces, from construction on (no races between
    an action and listener registration)."""

    name: str
    events: list[Any] = field(default_factory=list)
    _consumed: set[int] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, emitter: Any, types: tuple[type, ...]) -> None:
        for t in types:
            emitter.on(t, self._push)

    def _push(self, ev: Any) -> None:
        self.events.append(ev)
        self._changed.set()

    def of(self, etype: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, etype)]

    def index(self, ev: Any) -> int:
        for i, e in enumerate(self.events):
            if e is ev:
                return i
        raise ValueError(f"event not recorded: {ev!r}")

    async def wait_for(self, etype: type, pred: Callable[[Any], bool] = lambda e: True, *,
                       timeout: float = WAIT, what: str = "", after: Any = None) -> Any:
        """Return the first not-yet-returned event of `etype` matching `pred` (only among
        events recorded after the event `after`, when given)."""
        deadline = asyncio.get_running_loop().time() + timeout
        start = 0 if after is None else self.index(after) + 1
        while True:
            for i, ev in enumerate(self.events):
                if i < start:
                    continue
                if i not in self._consumed and isinstance(ev, etype) and pred(ev):
                    self._consumed.add(i)
                    return ev
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"[{self.name}] no {etype.__name__} {what} within {timeout}s; "
                    f"events seen: {self.events!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


SIGNALLING_EVENTS = (Connected, Disconnected, Message, Direct, Presence, ServerError,
                     GoingAway, StateChange)


@dataclass
class Client:
    sc: SignallingClient
    rec: Recorder
    logger: CapturingLogger

    @property
    def peer_id(self) -> str:
        ev = [e for e in self.rec.of(Connected)]
        assert ev, f"[{self.rec.name}] not connected"
        return ev[-1].peer_id


@pytest_asyncio.fixture
async def make_client():
    """Factory building SDK SignallingClients wired to a Recorder and a CapturingLogger.
    Closes every client at teardown and fails the test if the SDK dropped any server
    frame as malformed."""
    clients: list[Client] = []

    def make(url: str, *, api_key: str | None = None, token: str | None = None,
             name: str | None = None, **kwargs: Any) -> Client:
        n = name or f"client{len(clients)}"
        logger = CapturingLogger(n)
        if token is not None:
            kwargs["token_provider"] = token_provider(token)
        else:
            kwargs["api_key"] = api_key or DEV_KEY
        sc = SignallingClient(url=url, logger=logger, **kwargs)
        rec = Recorder(n)
        rec.attach(sc, SIGNALLING_EVENTS)
        c = Client(sc, rec, logger)
        clients.append(c)
        return c

    yield make

    for c in clients:
        try:
            await asyncio.wait_for(c.sc.close(), 5)
        except Exception:
            pass
    bad = {c.rec.name: c.logger.malformed() for c in clients if c.logger.malformed()}
    assert not bad, f"SDK dropped server frames as malformed / unexpected: {bad!r}"


async def connect(make_client, url: str, **kwargs: Any) -> Client:
    c = make_client(url, **kwargs)
    await asyncio.wait_for(c.sc.connect(), WAIT)
    return c


def now_ms() -> int:
    return int(time.time() * 1000)
