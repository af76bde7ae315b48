"""API keys: their table, the decision whether a credential may use a route, and per-key limits.

A key is ``dl_<id>_<secret>``: ``id`` (12 hex characters) is public and names the key in the store,
the logs and ``feedback.key_id``; ``secret`` is 256 random bits, shown once at creation. The store
keeps only ``sha256(secret)``. A slow password hash (bcrypt, argon2) exists to make guessing a
*low-entropy* secret expensive after a leak of the hashes; guessing 256 random bits is out of reach
at any hash speed, so a fast hash loses nothing and keeps each check to a microsecond. Hashes are
compared with :func:`hmac.compare_digest`, in constant time.

Nothing here knows HTTP: :func:`authorize` takes a credential and the scope a route needs and
returns a :class:`Decision`, which an ASGI layer (:mod:`bentos.access`) or a gRPC interceptor turns
into an answer. :class:`KeyRing` caches keys per process for ``ttl_s`` seconds (so a revocation
takes effect within that) and counts uses, written to the store in batches.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg2
import psycopg2.extensions

from training.errors import NotFoundError

__all__ = [
    "SCOPES",
    "Allowance",
    "ApiKey",
    "Decision",
    "KeyRing",
    "RateLimiter",
    "Scope",
    "StoreKeys",
    "authorize",
    "count_uses",
    "create_key",
    "find_key",
    "hash_secret",
    "list_keys",
    "parse_rate",
    "parse_token",
    "revoke_key",
]

log = logging.getLogger("driftloop.keys")

Scope = Literal["predict", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "feedback", "admin")
PREFIX = "dl"
_TOKEN = re.compile(r"dl_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
Connection = psycopg2.extensions.connection


@dataclass(frozen=True)
class ApiKey:
    """A key as stored (never its secret)."""

    id: str
    name: str
    scopes: frozenset[str]
    rate_per_s: float | None
    created_at: datetime
    revoked_at: datetime | None = None
    uses: int = 0
    last_used_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret (hex sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, None for anything else."""
    match = _TOKEN.fullmatch(token.strip())
    return (match.group(1), match.group(2)) if match else None


def parse_rate(text: str) -> float:
    """``10/s``, ``600/min`` or ``10`` (per second) as requests per second.

    Raises:
        ValueError: not a positive rate per second or minute.
    """
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "min": 60.0}.get(unit.strip())
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if per is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"a rate is N/s or N/min with N above 0, e.g. 10/s; got {text!r}")
    return value / per


# Every statement returns the key's columns in this order (read by _key).
_INSERT = (
    "INSERT INTO api_keys (id, name, secret_hash, scopes, rate_per_s) VALUES (%s, %s, %s, %s, %s)"
    " RETURNING id, name, scopes, rate_per_s, created_at, revoked_at, uses, last_used_at,"
    " secret_hash"
)
_SELECT = (
    "SELECT id, name, scopes, rate_per_s, created_at, revoked_at, uses, last_used_at, secret_hash"
    " FROM api_keys"
)
_REVOKE = (
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE name = %s OR id = %s"
    " RETURNING id, name, scopes, rate_per_s, created_at, revoked_at, uses, last_used_at,"
    " secret_hash"
)


def _key(row: tuple[Any, ...]) -> ApiKey:
    id_, name, scopes, rate, created, revoked, uses, last_used, secret_hash = row
    return ApiKey(
        id=id_,
        name=name,
        scopes=frozenset(scopes),
        rate_per_s=rate,
        created_at=created,
        revoked_at=revoked,
        uses=uses,
        last_used_at=last_used,
        secret_hash=secret_hash,
    )


def create_key(
    conn: Connection, name: str, scopes: Sequence[str], rate_per_s: float | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns it and its token (``dl_<id>_<secret>``), which is never stored.

    Raises:
        ValueError: no scope, an unknown scope, an empty name, or a name already taken.
    """
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {list(scopes)}")
    if not name.strip():
        raise ValueError("a key needs a name (who or what uses it)")
    if not name.isprintable() or len(name) > 100:
        # A newline in a name would forge a line in `driftloop keys list`.
        raise ValueError(
            "a key's name must be printable text of at most 100 characters"
            " (no newlines or control characters)"
        )
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    try:
        with conn.cursor() as cur:
            cur.execute(
                _INSERT,
                (key_id, name.strip(), hash_secret(secret), sorted(set(scopes)), rate_per_s),
            )
            row = cur.fetchone()
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
        raise ValueError(f"a key named {name.strip()!r} exists; pick another name") from None
    assert row is not None
    return _key(row), f"{PREFIX}_{key_id}_{secret}"


def list_keys(conn: Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    with conn.cursor() as cur:
        cur.execute(_SELECT + " ORDER BY created_at, id")
        return [_key(row) for row in cur.fetchall()]


def find_key(conn: Connection, key_id: str) -> ApiKey | None:
    """The key with this id, revoked or not."""
    with conn.cursor() as cur:
        cur.execute(_SELECT + " WHERE id = %s", (key_id,))
        row = cur.fetchone()
    return _key(row) if row else None


def revoke_key(conn: Connection, name_or_id: str) -> ApiKey:
    """Revoke a key by name or id (again: no change); the service refuses it within its cache TTL.

    Raises:
        NotFoundError: no key has that name or id.
    """
    with conn.cursor() as cur:
        cur.execute(_REVOKE, (name_or_id, name_or_id))
        row = cur.fetchone()
    if row is None:
        raise NotFoundError(f"no API key named or with id {name_or_id!r} (driftloop keys list)")
    return _key(row)


def count_uses(conn: Connection, uses: dict[str, int]) -> None:
    """Add ``uses`` (per key id) to the keys' counters, in one statement."""
    if not uses:
        return
    ids, counts = zip(*sorted(uses.items()), strict=True)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys k SET uses = k.uses + u.n, last_used_at = now()"
            " FROM unnest(%s::text[], %s::bigint[]) AS u(id, n) WHERE k.id = u.id",
            (list(ids), list(counts)),
        )


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on: ``status`` 200, or 401 (no or a wrong key) or 403 (the key
    lacks the route's scope), with the ``error`` to send."""

    status: int
    key: ApiKey | None = None
    error: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


def authorize(
    credential: str | None, scope: Scope, find: Callable[[str], ApiKey | None]
) -> Decision:
    """May ``credential`` (a key's token, None when none was sent) use a route needing ``scope``?

    ``find`` returns the key with an id (cached or from the store). An ``admin`` key may use
    every route.
    """
    if not credential:
        return Decision(401, error="an API key is required: send Authorization: Bearer <key>")
    parsed = parse_token(credential)
    key = find(parsed[0]) if parsed else None
    # Compare even when the key is unknown, so an unknown id costs the same as a wrong secret.
    expected = key.secret_hash if key else "0" * 64
    matches = hmac.compare_digest(hash_secret(parsed[1] if parsed else ""), expected)
    if key is None or not matches or key.revoked:
        return Decision(401, error="this API key is not valid (unknown, wrong or revoked)")
    if scope not in key.scopes and "admin" not in key.scopes:
        return Decision(
            403, key, f"this API key may not use this route: it needs the {scope!r} scope"
        )
    return Decision(200, key)


class KeysUnavailable(Exception):
    """The store cannot be asked about a key, and no recent answer about it is known."""


class KeyRing:
    """This process's view of the keys: each cached for ``ttl_s`` seconds (unknown ids too), and
    uses counted in memory, written by :meth:`flush` (a thread calls it every ``flush_s``).

    When the store cannot be reached, an id looked up in the last ``stale_s`` seconds keeps its
    last answer: the service's promise is that predictions go on (to the spool) through a store
    outage, and a key ring that refused every caller once its cache ran out would break it (and
    take ``/metrics``, which alerts on the outage, down with it). After a failed lookup the store
    is left alone for ``retry_s`` seconds, so a hung store does not hold every request up for the
    connect timeout.
    """

    def __init__(
        self,
        load: Callable[[str], ApiKey | None],
        write_uses: Callable[[dict[str, int]], None],
        ttl_s: float = 10.0,
        flush_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        stale_s: float = 3600.0,
        retry_s: float = 2.0,
        max_entries: int = 10_000,
    ) -> None:
        self._load = load
        self._write_uses = write_uses
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self.retry_s = retry_s
        self.max_entries = max_entries
        self._store_down_until = float("-inf")
        self.flush_s = flush_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._uses: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cached(self, key_id: str) -> tuple[bool, ApiKey | None]:
        """``(True, key)`` when a fresh entry is cached (key None: no such key), else (False, None)."""
        entry = self._cache.get(key_id)
        if entry is not None and self._clock() - entry[0] < self.ttl_s:
            return True, entry[1]
        return False, None

    def find(self, key_id: str) -> ApiKey | None:
        """The key with this id, from the cache or the store (a blocking query on a miss).

        Raises:
            KeysUnavailable: the store cannot be reached and this id has no answer younger than
                ``stale_s``.
        """
        hit, key = self.cached(key_id)
        if hit:
            return key
        if self._clock() < self._store_down_until:
            return self._stale(key_id, "the store failed a moment ago")
        try:
            key = self._load(key_id)
        except (psycopg2.Error, OSError) as exc:
            self._store_down_until = self._clock() + self.retry_s
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return self._stale(key_id, reason)
        # Bound the cache: ids are client input, and unknown ones are cached too. Guesses go
        # first, so a flood of them cannot evict the real keys (whose last answers are what a
        # store outage is served from).
        if len(self._cache) > self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[1] is not None}
            if len(self._cache) > self.max_entries:
                self._cache.clear()
        self._cache[key_id] = (self._clock(), key)
        return key

    def _stale(self, key_id: str, reason: str) -> ApiKey | None:
        """The last answer about ``key_id`` if it is younger than ``stale_s``."""
        entry = self._cache.get(key_id)
        if entry is not None and self._clock() - entry[0] < self.stale_s:
            return entry[1]
        raise KeysUnavailable(reason)

    def used(self, key_id: str) -> None:
        with self._lock:
            self._uses[key_id] += 1

    def flush(self) -> None:
        """Write the uses counted since the last flush; on failure keep them for the next."""
        with self._lock:
            uses, self._uses = dict(self._uses), Counter()
        if not uses:
            return
        try:
            self._write_uses(uses)
        except (psycopg2.Error, OSError) as exc:
            log.warning(
                "API key uses not written yet: %s",
                (str(exc).strip().splitlines() or [type(exc).__name__])[0],
            )
            with self._lock:
                self._uses.update(uses)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self.flush_s):
                self.flush()

        self._thread = threading.Thread(target=run, name="driftloop-key-uses", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_s + 5)
        self.flush()


@dataclass
class _Bucket:
    tokens: float
    at: float
    rate: float
    burst: int


@dataclass(frozen=True)
class Allowance:
    """A rate limit's answer: whether the request may go on and the ``X-RateLimit-*`` values."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at the key's rate per second.

    Per process: a server with N workers lets a key through up to N times its rate.
    """

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    # Buckets are made for client input (key ids, client addresses): past this many, the full
    # ones (which a new bucket would equal) are forgotten.
    MAX_BUCKETS = 10_000

    def take(self, key_id: str, rate_per_s: float | None = None, spend: bool = True) -> Allowance:
        """Spend one request of ``key_id``'s bucket (its own rate, or the default); with
        ``spend=False`` only say whether one would be allowed."""
        rate = rate_per_s or self.rate_per_s
        # A key's own rate allows a burst of one second's worth (at least one request).
        burst = max(1, math.ceil(rate)) if rate_per_s else self.burst
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key_id] = _Bucket(float(burst), now, rate, burst)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
        bucket.at, bucket.rate, bucket.burst = now, rate, burst
        allowed = bucket.tokens >= 1.0
        if allowed and spend:
            bucket.tokens -= 1.0
        # Seconds until the bucket is full again, and until one request is allowed.
        reset = math.ceil((burst - bucket.tokens) / rate)
        retry = 0 if allowed else max(1, math.ceil((1.0 - bucket.tokens) / rate))
        return Allowance(allowed, burst, int(bucket.tokens), reset, retry)

    def _forget_full(self, now: float) -> None:
        full = [
            name
            for name, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.at) * bucket.rate >= bucket.burst
        ]
        for name in full:
            del self._buckets[name]
        if len(self._buckets) >= self.MAX_BUCKETS:
            # Every bucket is in use (a flood of distinct ids): start over rather than grow.
            self._buckets.clear()


class StoreKeys:
    """:class:`KeyRing`'s access to the store: one connection kept open (a lookup of an unknown
    id must not cost a new connection), replaced when the server dropped it."""

    def __init__(self, database_url: str, connect_timeout_s: int, statement_timeout_ms: int):
        self.database_url = database_url
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _run(self, action: Callable[[Connection], Any]) -> Any:
        from training.store import service_connection

        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = service_connection(
                    self.database_url,
                    connect_timeout_s=self.connect_timeout_s,
                    statement_timeout_ms=self.statement_timeout_ms,
                    application_name="driftloop-keys",
                )
            try:
                with self._conn:
                    return action(self._conn)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._conn.close()
                self._conn = None
                raise

    def load(self, key_id: str) -> ApiKey | None:
        """The key with this id (psycopg2.Error when the store does not answer)."""
        key: ApiKey | None = self._run(lambda conn: find_key(conn, key_id))
        return key

    def write_uses(self, uses: dict[str, int]) -> None:
        self._run(lambda conn: count_uses(conn, uses))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
