"""The single table from exceptions to the error codes clients see (GraphQL and WebSocket)."""

from __future__ import annotations

from application.errors import ConcurrencyConflictError, WriterStoppedError
from domain.errors import AccessDeniedError, InvalidInputError, NotFoundError


class InterfaceError(Exception):
    """Refused at the edge, before reaching the write side."""


class AuthenticationError(InterfaceError):
    """No valid token: missing, malformed, forged or expired."""


class BadRequestError(InterfaceError):
    """The request is malformed (bad id, missing field, oversize frame...)."""


class RateLimitedError(InterfaceError):
    """The user sent too much too fast."""


ERROR_CODES: list[tuple[type[BaseException], str]] = [
    (AuthenticationError, "UNAUTHENTICATED"),
    (AccessDeniedError, "FORBIDDEN"),
    (NotFoundError, "NOT_FOUND"),
    (InvalidInputError, "BAD_USER_INPUT"),
    (BadRequestError, "BAD_USER_INPUT"),
    (RateLimitedError, "RATE_LIMITED"),
    (ConcurrencyConflictError, "INTERNAL"),
    (WriterStoppedError, "INTERNAL"),
]

INTERNAL_MESSAGE = "internal error"  # never leak stack details to clients


def error_code(error: BaseException) -> str:
    for error_class, code in ERROR_CODES:
        if isinstance(error, error_class):
            return code
    return "INTERNAL"


def public_message(error: BaseException) -> str:
    """The message a client may see: the rule that was broken, or a generic text."""
    if error_code(error) == "INTERNAL":
        return INTERNAL_MESSAGE
    return str(error) or type(error).__name__
