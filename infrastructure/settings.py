"""Settings, read once from the environment into one typed object (design.md §3).

Nothing else in the project reads `os.environ`; the composition root passes this object on.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEV_SECRET_FILE = "jwt_secret"  # kept in the data dir so tokens survive restarts in development


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: int = 6379
    jwt_secret: str | None = None
    jwt_algorithm: str = "HS256"
    frontend_url: str | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_bundle_id: str | None = None
    apns_key_file: str | None = None
    apns_endpoint: str | None = None
    fcm_credentials_file: str | None = Field(
        default=None, validation_alias=AliasChoices("FCM_CREDENTIALS_FILE", "FCM_SERVER_KEY")
    )
    fcm_endpoint: str | None = None
    vapid_private_key: str | None = None
    vapid_subject: str | None = None
    rate_limit_per_minute: int = 60
    loopify_data_dir: Path = Path(".loopify")
    loopify_env: str = "production"

    @property
    def data_dir(self) -> Path:
        return self.loopify_data_dir

    @property
    def is_development(self) -> bool:
        return self.loopify_env.lower() in ("development", "dev")

    @property
    def effective_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.redis_host:
            return f"redis://{self.redis_host}:{self.redis_port}/0"
        return None

    def resolved_jwt_secret(self) -> str:
        """The configured secret, or a generated development secret stored in the data dir."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / DEV_SECRET_FILE
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        path.write_text(secret)
        path.chmod(0o600)
        log.warning("JWT_SECRET is not set: generated a development secret in %s", path)
        return secret


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
