"""The API's settings: environment variables named RAKUTEN_API_<FIELD>, or the same names in a
`.env` file in the working directory, over the defaults below. In a container, secrets come as
files named after their variable (rakuten_api_secret, rakuten_api_database_url) in the folder
RAKUTEN_SECRETS_DIR names (/run/secrets with compose secrets or Kubernetes Secret volumes).

The server never reads params.yaml: a deployment has its bundle and its settings, nothing else.
The input limits are listed under `serve:` in params.yaml too, for reference (a test keeps both
equal).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from rakuten_classifier import config
from rakuten_classifier.preprocess import MAX_PIXELS
from rakuten_classifier.store.database import DEFAULT_URL, SECRETS_DIR_VARIABLE

ENV_PREFIX = "RAKUTEN_API_"
MIN_SECRET_BYTES = 32
BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
# Plain names: no ':' or ',' (the separators of the users setting), nothing to escape in logs.
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
MAKE_HASH = "rakuten-classifier hash-password --user NAME [--roles predict+reviewer]"
# What a token may do: predict (POST /predict*), reviewer (POST /feedback), admin (/admin/*).
ROLES = ("predict", "reviewer", "admin")
DEFAULT_ROLES = frozenset({"predict"})


@dataclass(frozen=True)
class User:
    password_hash: bytes
    roles: frozenset[str]


class SettingsError(ValueError):
    """Settings that keep the API from starting; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        secrets_dir=os.environ.get(SECRETS_DIR_VARIABLE) or None,
    )

    secret: SecretStr | None = Field(None, description="JWT signing secret, >= 32 bytes")
    users: str = Field("", description="username:bcrypt_hash[:roles] entries, comma-separated")
    users_file: Path | None = Field(None, description="file of username:bcrypt_hash[:roles] lines")
    # The models: local bundle folders, or the registry's champion and challenger aliases.
    model_source: Literal["local", "registry"] = "local"
    bundle: Path = config.BUNDLE_DIR
    challenger_bundle: Path | None = None
    registry_uri: str | None = None  # MLflow tracking URI; else MLFLOW_TRACKING_URI
    registered_model: str = "rakuten"
    model_cache: Path | None = None  # where registry bundles are downloaded
    # off: the champion answers; ab: a stable share of products goes to the challenger;
    # shadow: the champion answers, the challenger's answer to the same product is stored.
    mode: Literal["off", "ab", "shadow"] = "off"
    challenger_share: float = Field(0.1, ge=0, le=1)
    reload_seconds: float = Field(60, ge=0)  # registry alias check; 0: POST /admin/reload only
    shadow_max_pending: int = Field(256, ge=1)  # shadow predictions waiting, then skipped
    # The prediction and feedback store.
    database_url: SecretStr = SecretStr(DEFAULT_URL)
    store_texts: bool = False  # keep the products' texts with their predictions (privacy)
    store_spool_dir: Path = Path("data/store/spool")
    store_max_queue: int = Field(10_000, ge=1)
    store_spool_max_bytes: int = Field(1 << 30, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token_minutes: float = Field(30, gt=0)
    max_upload_bytes: int = Field(5_000_000, gt=0)
    # Pillow's own decoder limit stays the outer bound (the bundle decodes with it).
    max_pixels: int = Field(25_000_000, gt=0, le=MAX_PIXELS)
    max_text_chars: int = Field(20_000, gt=0)
    batch_max: int = Field(64, gt=0)
    max_batch_bytes: int = Field(64_000_000, gt=0)
    rate_per_minute: float = Field(600, gt=0)
    rate_burst: int = Field(60, ge=1)
    # POST /token: failed logins per username (from any address), and attempts per address.
    login_failures_per_minute: float = Field(6, gt=0)
    login_failures_burst: int = Field(5, ge=1)
    login_per_minute: float = Field(30, gt=0)
    login_burst: int = Field(10, ge=1)
    # Logins waiting for the (single) bcrypt thread beyond which /token answers 503.
    login_max_waiting: int = Field(8, ge=1)
    # Request headers: over max_header_bytes (all names and values) the answer is 431. Heads up
    # to header_read_bytes are read whole first, so the client gets that answer; longer ones
    # are cut off by the HTTP server.
    max_header_bytes: int = Field(16_384, gt=0)
    header_read_bytes: int = Field(2_097_152, gt=0)
    # Products waiting for the model beyond which requests get 503 instead of queueing forever.
    max_pending: int = Field(1024, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None

    def signing_secret(self) -> bytes:
        """The JWT secret, or a SettingsError that says how to make one (never what it was)."""
        value = self.secret.get_secret_value().encode() if self.secret else b""
        if not value:
            raise SettingsError(
                f"{ENV_PREFIX}SECRET is not set: the API signs its tokens with it. "
                f"Put a random value of at least {MIN_SECRET_BYTES} bytes in .env, e.g. "
                f'echo "{ENV_PREFIX}SECRET=$({MAKE_SECRET})" >> .env'
            )
        if len(value) < MIN_SECRET_BYTES:
            raise SettingsError(
                f"{ENV_PREFIX}SECRET is {len(value)} bytes long; it must be at least "
                f"{MIN_SECRET_BYTES} bytes. Make one with: {MAKE_SECRET}"
            )
        return value

    def load_users(self) -> dict[str, User]:
        """Users and their roles, from RAKUTEN_API_USERS and RAKUTEN_API_USERS_FILE: entries
        `username:bcrypt_hash` (role predict) or `username:bcrypt_hash:role+role`."""
        entries = [
            (f"{ENV_PREFIX}USERS entry {number}", entry)
            for number, entry in enumerate(self.users.split(","), 1)
            if entry.strip()
        ]
        if self.users_file is not None:
            if not self.users_file.is_file():
                raise SettingsError(
                    f"{ENV_PREFIX}USERS_FILE: {self.users_file} not found; add a user to it "
                    f"with `{MAKE_HASH} >> {self.users_file}`"
                )
            lines = self.users_file.read_text(encoding="utf-8").splitlines()
            entries += [
                (f"{self.users_file} line {number}", line)
                for number, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
        users: dict[str, User] = {}
        for where, entry in entries:
            name, _, rest = entry.strip().partition(":")
            hashed, _, listed = rest.partition(":")
            if not USERNAME.match(name) or not BCRYPT_HASH.match(hashed):
                raise SettingsError(
                    f"{where}: expected username:bcrypt_hash[:roles] (make one with `{MAKE_HASH}`)"
                )
            roles = frozenset(role for role in listed.split("+") if role) or DEFAULT_ROLES
            if unknown := sorted(roles - set(ROLES)):
                raise SettingsError(
                    f"{where}: unknown role(s) {', '.join(unknown)}; roles are "
                    f"{', '.join(ROLES)}, joined with '+'"
                )
            if name in users:
                raise SettingsError(f"{where}: user '{name}' is defined twice")
            users[name] = User(hashed.encode(), roles)
        if not users:
            raise SettingsError(
                f"no API user: set {ENV_PREFIX}USERS_FILE (lines from `{MAKE_HASH}`) "
                f"or {ENV_PREFIX}USERS in .env"
            )
        return users

    def challenger_wanted(self) -> bool:
        return self.mode != "off"


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env; `overrides` (not None) take precedence. Invalid
    values are reported by variable name, without their value (one of them is a secret)."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        problems = "; ".join(
            f"{ENV_PREFIX}{str(item['loc'][0]).upper()}: {item['msg']}" for item in error.errors()
        )
        raise SettingsError(f"invalid API settings: {problems}") from None
