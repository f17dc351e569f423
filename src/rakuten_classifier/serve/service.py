"""Everything one running API holds: its settings, the model and the worker that runs it, who
may log in, the limits and the metrics. `create_app` builds one; the routes reach it through
`request.app.state.service`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Request

from rakuten_classifier.bundle import Bundle, load_bundle
from rakuten_classifier.config import logger
from rakuten_classifier.serve.errors import BEARER, ApiError
from rakuten_classifier.serve.predictor import Predictor
from rakuten_classifier.serve.security import Authenticator, LoginGuard, RateLimiter, Tokens
from rakuten_classifier.serve.settings import Settings
from rakuten_classifier.serve.telemetry import Metrics


@dataclass
class Service:
    settings: Settings
    bundle: Bundle
    users: dict[str, bytes]
    tokens: Tokens
    logins: LoginGuard
    requests: RateLimiter
    metrics: Metrics
    predictor: Predictor
    started: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings, bundle: Bundle | None = None) -> Service:
        """Refuses (SettingsError) without a signing secret of 32 bytes or more and a user,
        before the bundle (default: the one at settings.bundle) is loaded."""
        secret = settings.signing_secret()
        users = settings.load_users()
        bundle = bundle or load_bundle(settings.bundle)
        metrics = Metrics()
        metrics.model.info({"version": bundle.version, "classes": str(len(bundle.labels.codes))})
        logins = LoginGuard(
            Authenticator(users),
            per_client=RateLimiter(settings.login_per_minute, settings.login_burst),
            per_user=RateLimiter(
                settings.login_failures_per_minute,
                settings.login_failures_burst,
                kind="login_rate_limited",
            ),
            max_waiting=settings.login_max_waiting,
        )
        return cls(
            settings=settings,
            bundle=bundle,
            users=users,
            tokens=Tokens(secret, timedelta(minutes=settings.token_minutes)),
            logins=logins,
            requests=RateLimiter(settings.rate_per_minute, settings.rate_burst),
            metrics=metrics,
            predictor=Predictor(bundle, metrics, settings.max_pending),
        )

    async def start(self) -> None:
        await self.predictor.start()
        logger.info("serving model %s from %s", self.bundle.version, self.bundle.path)

    async def stop(self) -> None:
        await self.predictor.stop()
        self.logins.close()

    def authenticate(self, request: Request) -> str:
        """The user of the request's bearer token (401 without a valid one), after the per-user
        rate limit (429). Runs before the body is read: an upload without a valid token costs
        the server nothing."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "missing_token",
                "this endpoint needs a token: send 'Authorization: Bearer <token>' with a "
                "token from POST /token",
                headers=BEARER,
            )
        user = self.tokens.subject(token.strip())
        if user not in self.users:
            raise ApiError(401, "invalid_token", "the token's user is gone", headers=BEARER)
        request.state.user = user
        self.requests.check(f"user:{user}", "requests")
        return user
