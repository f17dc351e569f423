"""Who may call the API: bcrypt password checks, signed short-lived tokens, rate limits, and the
guard in front of the password check."""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import bcrypt
import jwt

from rakuten_classifier.serve.errors import BEARER, ApiError

BCRYPT_MAX_BYTES = 72  # bcrypt ignores (bcrypt 5 refuses) anything longer
ISSUER = "rakuten-classifier"
ALGORITHM = "HS256"


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for the users setting; 2^rounds iterations make guessing expensive."""
    data = password.encode()
    if not data:
        raise ValueError("the password is empty")
    if len(data) > BCRYPT_MAX_BYTES:
        raise ValueError(f"bcrypt uses at most {BCRYPT_MAX_BYTES} bytes of a password")
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds)).decode()


class Authenticator:
    """Checks a username and password in the same time whether or not the user exists: an
    unknown user is checked against a dummy hash of the same cost, so timing tells nothing."""

    def __init__(self, hashes: dict[str, bytes]) -> None:
        self.hashes = hashes
        rounds = max(int(hashed.split(b"$")[2]) for hashed in hashes.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))

    def check(self, username: str, password: str) -> bool:
        hashed = self.hashes.get(username)
        data = password.encode()
        matches = bcrypt.checkpw(data[:BCRYPT_MAX_BYTES], hashed or self._dummy)
        return hashed is not None and matches and len(data) <= BCRYPT_MAX_BYTES


class Tokens:
    """HS256 JSON Web Tokens naming their user and roles, valid for `lifetime`."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def issue(self, username: str, roles: frozenset[str] = frozenset()) -> str:
        now = datetime.now(UTC)
        claims = {
            "sub": username,
            "roles": sorted(roles),
            "iss": ISSUER,
            "iat": now,
            "exp": now + self.lifetime,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def subject(self, token: str) -> tuple[str, frozenset[str]]:
        """The user a token was issued to and its roles; 401 if it is expired, forged or
        malformed."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "iss", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(
                401,
                "token_expired",
                "the token has expired: get a new one from POST /token",
                headers=BEARER,
            ) from None
        except jwt.InvalidTokenError:
            raise ApiError(
                401,
                "invalid_token",
                "the token is not valid: get one from POST /token",
                headers=BEARER,
            ) from None
        roles = claims.get("roles", [])
        return str(claims["sub"]), frozenset(roles if isinstance(roles, list) else [])


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute`. Held in this
    process's memory, so each server process (uvicorn worker) counts on its own."""

    MAX_KEYS = 10_000  # beyond this, buckets that are full again are forgotten

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        kind: str = "rate_limited",
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.kind = kind
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()  # /token runs in worker threads

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def _refuse(self, tokens: float, what: str) -> ApiError:
        wait = (1.0 - tokens) / self.rate
        return ApiError(
            429,
            self.kind,
            f"too many {what}: at most {self.rate * 60:g} a minute "
            f"(bursts of {self.burst:g}); retry in {wait:.1f} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )

    def _forget_full(self, now: float) -> None:
        if len(self._buckets) > self.MAX_KEYS:
            for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
                del self._buckets[key]

    def check(self, key: str, what: str) -> None:
        """Take one token from `key`'s bucket, or refuse with 429 and when to retry."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise self._refuse(tokens, what)
            self._buckets[key] = (tokens - 1.0, now)
            self._forget_full(now)

    def require(self, key: str, what: str) -> None:
        """Refuse with 429 if `key`'s bucket has no token, without taking one."""
        with self._lock:
            tokens = self._level(key, self._clock())
        if tokens < 1.0:
            raise self._refuse(tokens, what)

    def spend(self, key: str) -> None:
        """Take one token from `key`'s bucket if it has one (after the fact: never refuses)."""
        with self._lock:
            now = self._clock()
            self._buckets[key] = (max(0.0, self._level(key, now) - 1.0), now)
            self._forget_full(now)


class LoginGuard:
    """The password check behind limits that stop guessing before bcrypt runs:

    - per client address, every attempt takes a token: one client cannot make the server spend
      its cores on bcrypt;
    - per username, every failed attempt takes a token, from whatever address: wrong passwords
      in a row get 429 after the burst. This cannot lock the real user out for long: the next
      attempt is allowed as soon as one token is back (60 / per_minute seconds), and a
      successful login takes none.

    bcrypt runs on one thread of its own, never on the event loop (it would stall every request)
    nor on the model's thread (it would slow predictions); beyond `max_waiting` queued logins,
    503.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        per_client: RateLimiter,
        per_user: RateLimiter,
        max_waiting: int,
    ) -> None:
        self.authenticator = authenticator
        self.per_client = per_client
        self.per_user = per_user
        self.max_waiting = max_waiting
        self._waiting = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bcrypt")

    async def login(self, username: str, password: str, client: str) -> bool:
        """Whether the password is the user's; ApiError 429/503 when a limit refuses first."""
        user_key = f"user:{username[:128]}"
        self.per_client.check(f"client:{client}", "login attempts from this address")
        self.per_user.require(user_key, "failed logins for this username")
        if self._waiting >= self.max_waiting:
            raise ApiError(
                503,
                "overloaded",
                "too many logins are waiting for their password check; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            accepted = await loop.run_in_executor(
                self._executor, self.authenticator.check, username, password
            )
        finally:
            self._waiting -= 1
        if not accepted:
            self.per_user.spend(user_key)
        return accepted

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
