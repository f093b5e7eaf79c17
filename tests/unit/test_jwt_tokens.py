from __future__ import annotations

import time

import jwt
import pytest

from infrastructure.jwt_tokens import JwtCodec

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


class TestJwtCodec:
    def test_a_minted_token_names_its_user(self) -> None:
        codec = JwtCodec(SECRET)
        assert codec.authenticate(codec.mint("alice")) == "alice"

    def test_an_expired_token_is_refused(self) -> None:
        codec = JwtCodec(SECRET)
        assert codec.authenticate(codec.mint("alice", ttl_s=-120)) is None

    def test_a_token_without_exp_is_refused(self) -> None:
        token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        assert JwtCodec(SECRET).authenticate(token) is None

    def test_a_token_signed_with_another_secret_is_refused(self) -> None:
        token = JwtCodec("another-secret-that-is-also-long-enough!!").mint("alice")
        assert JwtCodec(SECRET).authenticate(token) is None

    def test_an_unsigned_none_algorithm_token_is_refused(self) -> None:
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
        assert JwtCodec(SECRET).authenticate(token) is None

    def test_a_token_of_another_algorithm_is_refused(self) -> None:
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
        assert JwtCodec(SECRET, "HS256").authenticate(token) is None

    def test_garbage_is_refused(self) -> None:
        assert JwtCodec(SECRET).authenticate("not.a.token") is None

    def test_the_none_algorithm_cannot_be_configured(self) -> None:
        with pytest.raises(ValueError):
            JwtCodec(SECRET, "none")
