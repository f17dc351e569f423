"""Who may call the API: tokens, refusals of bad ones, request limits per user, and the limits
in front of the password check (guessing gets 429 long before it gets anywhere)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from api_support import HASH, PASSWORD, SECRET, login, serving
from fastapi.testclient import TestClient

from rakuten_classifier.bundle import Bundle
from rakuten_classifier.serve.errors import ApiError
from rakuten_classifier.serve.security import Authenticator, LoginGuard, RateLimiter


def test_status_needs_no_token(client: TestClient, api_bundle: Bundle) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "up"
    assert body["model_version"] == api_bundle.manifest["model_version"]


def test_token_lets_its_holder_predict(client: TestClient) -> None:
    response = client.post("/token", data={"username": "alice", "password": PASSWORD})
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 30 * 60
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    answer = client.post("/predict", data={"designation": "Chaise de jardin"}, headers=headers)
    assert answer.status_code == 200, answer.text


def test_unknown_user_and_wrong_password_get_the_same_401(client: TestClient) -> None:
    answers = [
        client.post("/token", data={"username": user, "password": password})
        for user, password in (("alice", "wrong"), ("mallory", PASSWORD), ("alice", "x" * 100))
    ]
    bodies = []
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        bodies.append({k: v for k, v in answer.json().items() if k != "request_id"})
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[0]["error"] == "bad_credentials"


def _token(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    now = datetime.now(UTC)
    base = {"sub": "alice", "iss": "rakuten-classifier", "iat": now, "exp": now + timedelta(1)}
    return jwt.encode({**base, **claims}, key, algorithm=algorithm)


@pytest.mark.parametrize(
    ("authorization", "kind"),
    [
        (None, "missing_token"),
        ("Basic YWxpY2U6cGFzc3dvcmQ=", "missing_token"),
        ("Bearer not-a-token", "invalid_token"),
        (
            f"Bearer {_token({}, key='another secret of at least thirty-two bytes')}",
            "invalid_token",
        ),
        (f"Bearer {_token({'exp': datetime.now(UTC) - timedelta(seconds=5)})}", "token_expired"),
        (f"Bearer {_token({}, key='', algorithm='none')}", "invalid_token"),
        (f"Bearer {_token({'sub': 'mallory'})}", "invalid_token"),
    ],
    ids=["none", "basic", "garbage", "forged", "expired", "unsigned", "unknown-user"],
)
def test_requests_without_a_valid_token_get_401(
    client: TestClient, authorization: str | None, kind: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        client.post("/predict", data={"designation": "Chaise"}, headers=headers),
        client.post("/predict/batch", json={"products": [{"designation": "x"}]}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == kind
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_rate_limit_is_per_user(api_bundle: Bundle) -> None:
    users = f"alice:{HASH},bob:{HASH}"
    with serving(api_bundle, users=users, rate_burst=2, rate_per_minute=1) as limited:
        alice, bob = login(limited, "alice"), login(limited, "bob")
        form = {"designation": "Chaise de jardin"}
        statuses = [limited.post("/predict", data=form, headers=alice).status_code for _ in "ab"]
        assert statuses == [200, 200]
        refused = limited.post("/predict", data=form, headers=alice)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert limited.post("/predict", data=form, headers=bob).status_code == 200


# --- guessing passwords ----------------------------------------------------------------------


def test_wrong_passwords_in_a_row_get_429_before_the_end(api_bundle: Bundle) -> None:
    """The per-username limit: whatever the address, 100 guesses at alice's password are cut
    off after the burst; another user logs in as usual meanwhile."""
    users = f"alice:{HASH},bob:{HASH}"
    with serving(api_bundle, users=users, login_burst=1000, login_per_minute=6000) as api:
        answers = [
            api.post("/token", data={"username": "alice", "password": f"guess {n}"})
            for n in range(100)
        ]
        assert [a.status_code for a in answers[:5]] == [401] * 5
        assert {a.status_code for a in answers[5:]} == {429}
        refused = answers[-1]
        assert refused.json()["error"] == "login_rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        assert PASSWORD not in refused.text
        login(api, "bob")
        # Even the right password waits for the limit: guessing cannot be told apart.
        right = api.post("/token", data={"username": "alice", "password": PASSWORD})
        assert right.status_code == 429


def test_one_address_cannot_keep_the_password_check_busy(api_bundle: Bundle) -> None:
    """The per-address limit counts every attempt, whatever the username."""
    with serving(api_bundle, login_burst=3, login_per_minute=1) as api:
        statuses = [
            api.post("/token", data={"username": f"user{n}", "password": "x"}).status_code
            for n in range(6)
        ]
    assert statuses == [401, 401, 401, 429, 429, 429]


def test_a_lockout_lasts_only_until_one_attempt_is_allowed_again() -> None:
    now = [0.0]
    authenticator = Authenticator({"alice": HASH.encode()})
    guard = LoginGuard(
        authenticator,
        per_client=RateLimiter(1e6, 10**6),
        per_user=RateLimiter(6, 5, clock=lambda: now[0], kind="login_rate_limited"),
        max_waiting=8,
    )

    async def attempt(password: str) -> bool:
        return await guard.login("alice", password, "203.0.113.7")

    try:
        for _ in range(5):
            assert asyncio.run(attempt("wrong")) is False
        with pytest.raises(ApiError) as refused:
            asyncio.run(attempt(PASSWORD))
        assert refused.value.status == 429
        now[0] += 10.0  # one token back: 60 s / 6 a minute
        assert asyncio.run(attempt(PASSWORD)) is True
    finally:
        guard.close()


def test_bcrypt_runs_on_its_own_thread(api_bundle: Bundle, monkeypatch) -> None:
    """Neither the event loop (it would stall every request) nor the model's worker thread
    (it would slow predictions) checks passwords."""
    threads: list[str] = []
    check = Authenticator.check

    def recording(self: Authenticator, username: str, password: str) -> bool:
        threads.append(threading.current_thread().name)
        return check(self, username, password)

    monkeypatch.setattr(Authenticator, "check", recording)
    with serving(api_bundle) as api:
        login(api)
        api.post("/token", data={"username": "alice", "password": "wrong"})
    assert len(threads) == 2
    assert all(name.startswith("bcrypt") for name in threads), threads
