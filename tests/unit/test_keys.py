"""API keys without a store: token format, the auth decision, the key cache, the token bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from training.keys import (
    ApiKey,
    KeyRing,
    KeysUnavailable,
    RateLimiter,
    authorize,
    hash_secret,
    parse_rate,
    parse_token,
)

SECRET = "s" * 43
TOKEN = f"dl_0123456789ab_{SECRET}"


def _key(scopes: set[str], revoked: bool = False) -> ApiKey:
    return ApiKey(
        id="0123456789ab",
        name="app",
        scopes=frozenset(scopes),
        rate_per_s=None,
        created_at=datetime.now(UTC),
        revoked_at=datetime.now(UTC) if revoked else None,
        secret_hash=hash_secret(SECRET),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_parse_token_takes_only_the_exact_shape() -> None:
    assert parse_token(TOKEN) == ("0123456789ab", SECRET)
    assert parse_token(f"  {TOKEN} ") == ("0123456789ab", SECRET)
    for bad in ("", "dl_0123456789ab", TOKEN + "x", TOKEN.replace("dl_", "xx_"), "Bearer " + TOKEN):
        assert parse_token(bad) is None


@pytest.mark.parametrize(("text", "rate"), [("10/s", 10.0), ("600/min", 10.0), ("2.5", 2.5)])
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["0/s", "-1/s", "ten/s", "10/h", "nan", "inf/s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="N/s or N/min"):
        parse_rate(text)


def test_authorize_statuses() -> None:
    def find(key: ApiKey | None):  # type: ignore[no-untyped-def]
        return lambda key_id: key

    assert authorize(None, "predict", find(_key({"predict"}))).status == 401
    assert authorize("nonsense", "predict", find(_key({"predict"}))).status == 401
    assert authorize(TOKEN, "predict", find(None)).status == 401
    wrong = TOKEN[:-1] + ("t" if TOKEN[-1] != "t" else "u")
    assert authorize(wrong, "predict", find(_key({"predict"}))).status == 401
    assert authorize(TOKEN, "predict", find(_key({"predict"}, revoked=True))).status == 401
    refused = authorize(TOKEN, "feedback", find(_key({"predict"})))
    assert refused.status == 403
    assert "'feedback' scope" in refused.error
    allowed = authorize(TOKEN, "feedback", find(_key({"predict", "feedback"})))
    assert allowed.allowed
    assert allowed.key is not None
    assert allowed.key.id == "0123456789ab"
    assert authorize(TOKEN, "feedback", find(_key({"admin"}))).allowed


def test_key_ring_caches_for_its_ttl_then_reloads() -> None:
    clock = Clock()
    stored: dict[str, ApiKey | None] = {"0123456789ab": _key({"predict"})}
    loads: list[str] = []

    def load(key_id: str) -> ApiKey | None:
        loads.append(key_id)
        return stored[key_id]

    ring = KeyRing(load, lambda uses: None, ttl_s=10, clock=clock)
    assert ring.find("0123456789ab") is not None
    stored["0123456789ab"] = _key({"predict"}, revoked=True)
    clock.now = 9.9
    found = ring.find("0123456789ab")
    assert found is not None
    assert not found.revoked
    clock.now = 10.0
    found = ring.find("0123456789ab")
    assert found is not None
    assert found.revoked
    assert loads == ["0123456789ab", "0123456789ab"]


def test_key_ring_answers_from_its_last_lookup_while_the_store_is_down() -> None:
    """A store outage: ids looked up within stale_s keep their answer (a known key, an unknown
    id), one never looked up is KeysUnavailable, and the store is not asked again for retry_s."""
    clock = Clock()
    down = [False]
    loads: list[str] = []

    def load(key_id: str) -> ApiKey | None:
        loads.append(key_id)
        if down[0]:
            raise OSError("connection refused")
        return _key({"predict"}) if key_id == "0123456789ab" else None

    ring = KeyRing(load, lambda uses: None, ttl_s=10, clock=clock, stale_s=60, retry_s=2)
    assert ring.find("0123456789ab") is not None
    assert ring.find("unknown00000") is None
    down[0] = True
    clock.now = 30.0
    assert ring.find("0123456789ab") is not None
    assert ring.find("unknown00000") is None
    with pytest.raises(KeysUnavailable, match="failed a moment ago"):
        ring.find("neverseen000")
    assert loads.count("unknown00000") == 1, "asked the store again within retry_s"
    clock.now = 59.9
    assert ring.find("0123456789ab") is not None
    clock.now = 60.0
    with pytest.raises(KeysUnavailable):
        ring.find("0123456789ab")
    down[0] = False
    clock.now = 70.0
    assert ring.find("0123456789ab") is not None
    assert ring.find("neverseen000") is None


def test_a_flood_of_unknown_ids_does_not_evict_the_real_keys() -> None:
    """Past its bound the cache drops the ids that name no key first: a key looked up before the
    flood still answers from the cache (and so through a store outage)."""
    clock = Clock()
    down = [False]

    def load(key_id: str) -> ApiKey | None:
        if down[0]:
            raise OSError("connection refused")
        return _key({"predict"}) if key_id == "0123456789ab" else None

    ring = KeyRing(load, lambda uses: None, ttl_s=10, clock=clock, max_entries=100)
    assert ring.find("0123456789ab") is not None
    for n in range(150):
        assert ring.find(f"guess{n:07d}") is None
    down[0] = True
    clock.now = 30.0
    assert ring.find("0123456789ab") is not None


def test_key_ring_with_no_staleness_refuses_once_the_store_is_down() -> None:
    clock = Clock()
    down = [False]

    def load(key_id: str) -> ApiKey | None:
        if down[0]:
            raise OSError("connection refused")
        return _key({"predict"})

    ring = KeyRing(load, lambda uses: None, ttl_s=10, clock=clock, stale_s=0)
    assert ring.find("0123456789ab") is not None
    down[0] = True
    clock.now = 10.0
    with pytest.raises(KeysUnavailable):
        ring.find("0123456789ab")


def test_key_ring_counts_uses_and_keeps_them_when_the_store_fails() -> None:
    written: list[dict[str, int]] = []
    fail = [True]

    def write(uses: dict[str, int]) -> None:
        if fail[0]:
            raise OSError("store down")
        written.append(uses)

    ring = KeyRing(lambda key_id: None, write)
    for _ in range(3):
        ring.used("a")
    ring.used("b")
    ring.flush()
    assert written == []
    fail[0] = False
    ring.used("a")
    ring.flush()
    assert written == [{"a": 4, "b": 1}]
    ring.flush()
    assert written == [{"a": 4, "b": 1}]


def test_token_bucket_bursts_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    answers = [limiter.take("k") for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [a.remaining for a in answers] == [2, 1, 0, 0]
    assert answers[0].limit == 3
    assert answers[3].retry_after_s == 1
    assert answers[3].reset_s == 2  # 3 tokens at 2/s
    clock.now = 0.5  # one token back
    assert limiter.take("k").allowed
    assert not limiter.take("k").allowed
    assert limiter.take("other").allowed  # buckets are per key


def test_a_keys_own_rate_bursts_one_seconds_worth() -> None:
    limiter = RateLimiter(rate_per_s=100, burst=100, clock=Clock())
    answers = [limiter.take("k", rate_per_s=2) for _ in range(3)]
    assert [a.allowed for a in answers] == [True, True, False]
    assert answers[0].limit == 2


def test_asking_without_spending_leaves_the_bucket_as_it_was() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=2, clock=Clock())
    assert limiter.take("addr", spend=False).remaining == 2
    assert limiter.take("addr").allowed
    assert limiter.take("addr").allowed
    assert not limiter.take("addr", spend=False).allowed


def test_buckets_for_client_input_stay_bounded_and_keep_the_spent_ones() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1, burst=2, clock=clock)
    limiter.MAX_BUCKETS = 100
    limiter.take("spent")
    limiter.take("spent")
    for n in range(200):  # full buckets: forgotten when room is needed
        limiter.take(f"id-{n}", spend=False)
    assert len(limiter._buckets) <= 100
    assert not limiter.take("spent").allowed  # its empty bucket was kept
