from __future__ import annotations

from pathlib import Path

import pytest

from infrastructure.postgres_url import parse_database_url, with_database
from infrastructure.settings import Settings


class TestDatabaseUrl:
    def test_a_tcp_url_gives_host_port_user_password_and_database(self) -> None:
        params = parse_database_url("postgresql://app:s%40cret@db.internal:6432/chat")
        assert (params.host, params.port, params.user, params.password, params.dbname) == (
            "db.internal", 6432, "app", "s@cret", "chat"
        )

    def test_a_unix_socket_url_uses_the_socket_directory_as_host(self) -> None:
        params = parse_database_url("postgresql://postgres:@/postgres?host=/tmp/pg")
        assert (params.host, params.dbname, params.password) == ("/tmp/pg", "postgres", "")

    def test_other_schemes_are_refused(self) -> None:
        with pytest.raises(ValueError):
            parse_database_url("mysql://x@y/z")

    def test_with_database_keeps_the_server_and_swaps_the_database(self) -> None:
        url = with_database("postgresql://postgres:@/postgres?host=/tmp/pg", "t_1")
        assert parse_database_url(url).dbname == "t_1"
        assert parse_database_url(url).host == "/tmp/pg"


class TestSettings:
    def test_redis_host_and_port_make_a_url_when_no_redis_url_is_set(self) -> None:
        settings = Settings(redis_host="cache", redis_port=6380)
        assert settings.effective_redis_url == "redis://cache:6380/0"

    def test_a_development_jwt_secret_is_generated_once_and_kept(self, tmp_path: Path) -> None:
        settings = Settings(loopify_data_dir=tmp_path)
        first = settings.resolved_jwt_secret()
        assert len(first) >= 32
        assert Settings(loopify_data_dir=tmp_path).resolved_jwt_secret() == first

    def test_a_configured_jwt_secret_wins(self, tmp_path: Path) -> None:
        assert Settings(jwt_secret="configured", loopify_data_dir=tmp_path).resolved_jwt_secret() == "configured"

    def test_the_legacy_fcm_server_key_name_is_accepted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FCM_SERVER_KEY", "/secrets/fcm.json")
        assert Settings().fcm_credentials_file == "/secrets/fcm.json"
