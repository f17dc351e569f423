"""Who may call the API: bcrypt password checks, signed short-lived tokens, per-user rate limits."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
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

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        rounds = max(int(hashed.split(b"$")[2]) for hashed in users.values())
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))

    def check(self, username: str, password: str) -> bool:
        hashed = self.users.get(username)
        data = password.encode()
        matches = bcrypt.checkpw(data[:BCRYPT_MAX_BYTES], hashed or self._dummy)
        return hashed is not None and matches and len(data) <= BCRYPT_MAX_BYTES


class Tokens:
    """HS256 JSON Web Tokens naming their user, valid for `lifetime`."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def issue(self, username: str) -> str:
        now = datetime.now(UTC)
        claims = {"sub": username, "iss": ISSUER, "iat": now, "exp": now + self.lifetime}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def subject(self, token: str) -> str:
        """The user a token was issued to; 401 if it is expired, forged or malformed."""
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
        return str(claims["sub"])


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute`. Held in this
    process's memory, so each server process (uvicorn worker) counts on its own."""

    MAX_KEYS = 10_000  # beyond this, buckets that are full again are forgotten

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()  # /token runs in worker threads

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def check(self, key: str, what: str) -> None:
        """Take one token from `key`'s bucket, or refuse with 429 and when to retry."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise ApiError(
                    429,
                    "rate_limited",
                    f"too many {what}: at most {self.rate * 60:g} a minute "
                    f"(bursts of {self.burst:g}); retry in {wait:.1f} s",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_KEYS:
                full = [k for k in self._buckets if self._level(k, now) >= self.burst]
                for k in full:
                    del self._buckets[k]
