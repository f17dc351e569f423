"""Everything one running API holds: its settings, the models and their workers, who may log in
with which roles, the limits, the prediction store and the metrics. `create_app` builds one;
the routes reach it through `request.app.state.service`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Request

from rakuten_classifier.bundle import Bundle
from rakuten_classifier.config import logger
from rakuten_classifier.serve.errors import BEARER, ApiError
from rakuten_classifier.serve.models import CHALLENGER, CHAMPION, ModelSet
from rakuten_classifier.serve.security import Authenticator, LoginGuard, RateLimiter, Tokens
from rakuten_classifier.serve.settings import Settings, User
from rakuten_classifier.serve.telemetry import Metrics
from rakuten_classifier.store.writer import StoreWriter


@dataclass
class Service:
    settings: Settings
    users: dict[str, User]
    tokens: Tokens
    logins: LoginGuard
    requests: RateLimiter
    metrics: Metrics
    models: ModelSet
    store: StoreWriter
    started: float = field(default_factory=time.time)
    pending_shadows: set[asyncio.Task] = field(default_factory=set)
    _reloading: asyncio.Task | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        bundle: Bundle | None = None,
        challenger: Bundle | None = None,
    ) -> Service:
        """Refuses (SettingsError) without a signing secret of 32 bytes or more and a user.
        `bundle` and `challenger` replace the configured models (tests, embedding)."""
        secret = settings.signing_secret()
        users = settings.load_users()
        metrics = Metrics()
        store = StoreWriter(
            settings.database_url.get_secret_value(),
            settings.store_spool_dir,
            max_queue=settings.store_max_queue,
            spool_max_bytes=settings.store_spool_max_bytes,
        )
        metrics.watch_store(store)
        logins = LoginGuard(
            Authenticator({name: user.password_hash for name, user in users.items()}),
            per_client=RateLimiter(settings.login_per_minute, settings.login_burst),
            per_user=RateLimiter(
                settings.login_failures_per_minute,
                settings.login_failures_burst,
                kind="login_rate_limited",
            ),
            max_waiting=settings.login_max_waiting,
        )
        given = {CHAMPION: bundle, CHALLENGER: challenger}
        models = ModelSet(
            settings, metrics, given={k: v for k, v in given.items() if v is not None}
        )
        return cls(
            settings=settings,
            users=users,
            tokens=Tokens(secret, timedelta(minutes=settings.token_minutes)),
            logins=logins,
            requests=RateLimiter(settings.rate_per_minute, settings.rate_burst),
            metrics=metrics,
            models=models,
            store=store,
        )

    async def start(self) -> None:
        self.store.start()
        await self.models.load()
        champion = self.models.champion
        logger.info("serving model %s from %s", champion.version, champion.source.describe())
        if encoders := champion.bundle.sentence_encoders:
            # e5 costs about 0.2 s a product: say so where latency matters.
            logger.warning(
                "model %s reads the sentence encoders %s on every request (e5: about 200 ms a "
                "product); `make api-bundle` builds the same recipe without them",
                champion.version,
                encoders,
            )
        if self.settings.model_source == "registry" and self.settings.reload_seconds > 0:
            self._reloading = asyncio.create_task(self._reload_regularly(), name="reload")

    async def stop(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)
        await asyncio.gather(*self.pending_shadows, return_exceptions=True)
        await self.models.stop()
        await asyncio.to_thread(self.store.stop)
        self.logins.close()

    async def _reload_regularly(self) -> None:
        """Pick up an alias moved in the registry, without a restart."""
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            with contextlib.suppress(Exception):  # logged and counted by reload()
                await self.models.reload()

    def authenticate(self, request: Request, role: str) -> str:
        """The user of the request's bearer token (401 without a valid one), if the token and
        the users file both give it `role` (else 403), after the per-user rate limit (429).
        Runs before the body is read: an upload without a valid token costs nothing."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing_token",
                "this endpoint needs a token: send 'Authorization: Bearer <token>' with a "
                "token from POST /token",
                headers=BEARER,
            )
        name, token_roles = self.tokens.subject(token.strip())
        user = self.users.get(name)
        if user is None:
            raise ApiError(401, "invalid_token", "the token's user is gone", headers=BEARER)
        request.state.user = name
        # A role removed from the users file is gone at once, whatever the token says.
        if role not in token_roles & user.roles:
            raise ApiError(
                403,
                "forbidden",
                f"this endpoint needs the role '{role}', which user '{name}' does not have",
            )
        self.requests.check(f"user:{name}", "requests")
        return name
