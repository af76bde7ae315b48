"""API keys in the real store, and the ``driftloop keys`` commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli import driftloop
from training.errors import NotFoundError
from training.keys import (
    authorize,
    count_uses,
    create_key,
    find_key,
    hash_secret,
    list_keys,
    parse_token,
    revoke_key,
)
from training.store import connect

pytestmark = pytest.mark.integration


def test_create_stores_only_the_hash_and_the_token_authorizes(store_url: str) -> None:
    with connect(store_url) as conn:
        key, token = create_key(conn, "app", ["predict", "feedback"], rate_per_s=5)
    parsed = parse_token(token)
    assert parsed is not None
    assert parsed[0] == key.id
    with connect(store_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (key.id,))
        assert cur.fetchone() == (hash_secret(parsed[1]),)
        cur.execute("SELECT count(*) FROM api_keys WHERE secret_hash LIKE %s", (f"%{parsed[1]}%",))
        assert cur.fetchone() == (0,)
    with connect(store_url) as conn:
        decision = authorize(token, "feedback", lambda key_id: find_key(conn, key_id))
        assert decision.allowed
        assert decision.key is not None
        assert decision.key.rate_per_s == 5


def test_names_are_unique_and_scopes_known(store_url: str) -> None:
    with connect(store_url) as conn:
        create_key(conn, "app", ["predict"])
    with connect(store_url) as conn, pytest.raises(ValueError, match="exists"):
        create_key(conn, "app", ["predict"])
    with connect(store_url) as conn, pytest.raises(ValueError, match="scopes must be"):
        create_key(conn, "other", ["write"])


def test_revoke_by_name_or_id_and_count_uses(store_url: str) -> None:
    with connect(store_url) as conn:
        first, token = create_key(conn, "first", ["predict"])
        second, _ = create_key(conn, "second", ["admin"])
        count_uses(conn, {first.id: 3, second.id: 1})
        count_uses(conn, {first.id: 2})
    with connect(store_url) as conn:
        assert revoke_key(conn, "first").revoked
        assert revoke_key(conn, second.id).revoked
        with pytest.raises(NotFoundError):
            revoke_key(conn, "nobody")
        keys = {k.name: k for k in list_keys(conn)}
        assert authorize(token, "predict", lambda key_id: find_key(conn, key_id)).status == 401
    assert keys["first"].uses == 5
    assert keys["second"].uses == 1
    assert keys["first"].last_used_at is not None


def test_cli_create_list_revoke(env: Path) -> None:
    created = driftloop(
        "keys", "create", "--name", "labeller", "--scope", "feedback", "--rate", "2/s"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[2]
    assert parse_token(token) is not None
    listed = driftloop("keys", "list")
    assert "labeller" in listed.stdout
    assert "feedback" in listed.stdout
    assert "2/s" in listed.stdout
    assert token not in listed.stdout
    again = driftloop("keys", "create", "--name", "labeller", "--scope", "predict")
    assert again.returncode == 1
    assert "exists" in again.stderr
    revoked = driftloop("keys", "revoke", "labeller")
    assert revoked.returncode == 0
    assert "within 10 s" in revoked.stdout
    assert "revoked" in driftloop("keys", "list").stdout
    missing = driftloop("keys", "revoke", "nobody")
    assert missing.returncode == 1
    assert "no API key" in missing.stderr


def test_a_name_that_would_forge_a_listed_line_is_refused(env: Path) -> None:
    forged = driftloop(
        "keys", "create", "--name", "evil\n73f25043779f  adm2  admin", "--scope", "predict"
    )
    assert forged.returncode == 1
    assert "printable" in forged.stderr
    assert "Traceback" not in forged.stderr
    assert "adm2" not in driftloop("keys", "list").stdout


def _bogus_token(n: int) -> str:
    return f"dl_{n:012x}_{'x' * 43}"


def test_the_gate_limits_failed_attempts_per_address_before_any_lookup(
    store_url: str, tmp_path: Path
) -> None:
    """:class:`bentos.access.Gate` on the real store: past its address's failures, a guessed key
    is refused with 429 and never looked up; a valid key from another address goes on."""
    import asyncio

    from bentos.access import Gate
    from bentos.hotpath import Refusal
    from training.settings import Settings

    with connect(store_url) as conn:
        _, token = create_key(conn, "app", ["predict"])
    gate = Gate(
        Settings(
            home=tmp_path, database_url=store_url, auth="on", auth_fail_rate=0.5, auth_fail_burst=3
        )
    )
    ring = gate._start()
    lookups: list[str] = []
    load = ring._load
    ring._load = lambda key_id: lookups.append(key_id) or load(key_id)  # type: ignore[method-assign]

    async def attempt(sent: str | None, client: str) -> int:
        try:
            await gate.admit(sent, "predict", client)
        except Refusal as refusal:
            return refusal.status
        return 200

    async def run() -> list[int]:
        return [await attempt(_bogus_token(n), "10.0.0.1") for n in range(6)]

    try:
        statuses = asyncio.run(run())
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert len(lookups) == 3  # the refused ones cost no query
        assert asyncio.run(attempt(None, "10.0.0.1")) == 429  # no key at all: same bucket
        assert asyncio.run(attempt(token, "10.0.0.2")) == 200
        assert asyncio.run(attempt(_bogus_token(99), "10.0.0.2")) == 401
    finally:
        gate.close()


def test_the_gates_401_and_503_carry_the_allowance_of_the_address(tmp_path: Path) -> None:
    """:class:`bentos.access.Gate` with its store unreachable (nothing listens on port 1): no key
    is a 401 that spends a token of the address's bucket; a key it cannot look up is a 503 that
    spends none. Both carry the bucket's ``X-RateLimit-*`` (which gRPC sends as metadata)."""
    import asyncio

    from bentos.access import Gate
    from bentos.hotpath import Refusal
    from training.settings import Settings

    gate = Gate(
        Settings(
            home=tmp_path,
            database_url="postgresql://driftloop@127.0.0.1:1/nowhere",
            auth="on",
            auth_fail_burst=3,
            db_connect_timeout_s=1,
        )
    )
    gate._start()

    async def refusal(sent: str | None) -> Refusal:
        with pytest.raises(Refusal) as refused:
            await gate.admit(sent, "predict", "10.0.0.1")
        return refused.value

    try:
        missing = asyncio.run(refusal(None))
        unchecked = asyncio.run(refusal(_bogus_token(1)))
    finally:
        gate.close()
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.headers["X-RateLimit-Limit"] == "3"
    assert missing.headers["X-RateLimit-Remaining"] == "2"
    assert int(missing.headers["X-RateLimit-Reset"]) >= 1
    assert unchecked.status == 503, unchecked.body
    assert unchecked.headers["Retry-After"] == "5"
    assert unchecked.headers["X-RateLimit-Limit"] == "3"
    assert unchecked.headers["X-RateLimit-Remaining"] == "2"
