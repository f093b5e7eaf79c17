"""JWT minting and verification (pyjwt) with the algorithm pinned.

The verifier accepts exactly the configured algorithm, so a token signed with `none` or with
another algorithm (the classic HS/RS confusion) is refused, and it requires `exp` and `sub`.
"""

from __future__ import annotations

import time

import jwt

REFUSED_ALGORITHMS = frozenset({"none", ""})
DEFAULT_TOKEN_TTL_S = 3600  # a development token lasts an hour, like a typical access token
CLOCK_SKEW_LEEWAY_S = 30  # tolerate small clock drift between the issuer and this node


class JwtCodec:
    def __init__(self, secret: str, algorithm: str = "HS256") -> None:
        if algorithm.lower() in REFUSED_ALGORITHMS:
            raise ValueError("JWT_ALGORITHM 'none' is not allowed")
        if not secret:
            raise ValueError("a JWT secret is required")
        self._secret = secret
        self.algorithm = algorithm

    def mint(self, user_id: str, ttl_s: int = DEFAULT_TOKEN_TTL_S) -> str:
        now = int(time.time())
        return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl_s}, self._secret, algorithm=self.algorithm)

    def authenticate(self, token: str) -> str | None:
        """The token's user id, or None when the token is malformed, forged or expired."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.algorithm],
                options={"require": ["exp", "sub"]},
                leeway=CLOCK_SKEW_LEEWAY_S,
            )
        except jwt.PyJWTError:
            return None
        subject = claims.get("sub")
        return subject if isinstance(subject, str) and subject else None
