"""The configuration / CLI contract the lead published for Parlor."""

from __future__ import annotations

import asyncio

import pytest

from conftest import WAIT, ParlorServer, connect, parlor_bin
from metered_realtime import Connected, Presence
import subprocess

# The README's example configuration (secrets must be at least 16 bytes; HS256 keys
# shorter than that are refused by both `parlor serve` and `parlor token`).
CONTRACT_EXAMPLE = """
admin_secret = "adm_secret"
echo_publisher = true
[limits]
max_message_size = 65536
max_subscriptions_per_connection = 100
rate_per_sec = 50
rate_burst = 300
[[accounts]]
id = "acme"
max_connections = 100
message_quota = 1000
quota_window_secs = 60
suspended = false
[[keys]]
key = "pk_live_abc"
account = "acme"
channels = ["room-*"]
actions = ["subscribe", "publish", "presence", "send"]
metadata = { iceServers = [{ urls = "stun:stun.example.org:3478" }] }
[[secrets]]
kid = "main"
secret = "sk_test_secret_0123456789"
account = "acme"
"""

SHORT_SECRET = CONTRACT_EXAMPLE.replace("sk_test_secret_0123456789", "sk_test_secret")


async def test_contract_example_config_and_token(tmp_path, make_client):
    """The documented example must be accepted by `parlor serve`, and
    `parlor token --secret ... --kid main` must mint a token that server accepts."""
    try:
        srv = ParlorServer(tmp_path, "contract", CONTRACT_EXAMPLE, dev_key=True)
    except RuntimeError as e:
        pytest.fail(f"parlor rejected the contract's example config: {e}")
    try:
        out = subprocess.run([parlor_bin(), "token", "--secret", "sk_test_secret_0123456789", "--kid",
                              "main", "--channel", "room-*"], capture_output=True,
                             timeout=WAIT)
        assert out.returncode == 0, out.stderr
        tok = out.stdout.decode().strip()
        c = await connect(make_client, srv.url, token=tok)
        assert c.rec.of(Connected)[0].expires_at is not None
        k = await connect(make_client, srv.url, api_key="pk_live_abc")
        assert k.rec.of(Connected)[0].ice_servers is not None
        await k.sc.subscribe("room-1")
        await k.rec.wait_for(Presence, lambda e: e.channel == "room-1")
    finally:
        srv.kill()


def test_short_secrets_are_refused_by_serve_and_token(tmp_path):
    """A secret under 16 bytes is a configuration error, reported clearly by both commands."""
    with pytest.raises(RuntimeError, match="at least 16 bytes"):
        ParlorServer(tmp_path, "short", SHORT_SECRET, dev_key=True)
    out = subprocess.run([parlor_bin(), "token", "--secret", "sk_test_secret"],
                         capture_output=True, timeout=WAIT)
    assert out.returncode != 0
    assert b"at least 16 bytes" in out.stderr
