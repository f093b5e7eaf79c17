from __future__ import annotations

import pytest

from application.errors import ConcurrencyConflictError
from domain.errors import (
    ConversationNotFoundError,
    InvalidContentError,
    MessageDeletedError,
    NotMessageSenderError,
    NotParticipantError,
)
from interfaces.errors import AuthenticationError, BadRequestError, RateLimitedError, error_code, public_message


class TestErrorCodes:
    @pytest.mark.parametrize(
        ("error", "code"),
        [
            (AuthenticationError(), "UNAUTHENTICATED"),
            (NotParticipantError(), "FORBIDDEN"),
            (NotMessageSenderError(), "FORBIDDEN"),
            (ConversationNotFoundError(), "NOT_FOUND"),
            (InvalidContentError(), "BAD_USER_INPUT"),
            (MessageDeletedError(), "BAD_USER_INPUT"),
            (BadRequestError(), "BAD_USER_INPUT"),
            (RateLimitedError(), "RATE_LIMITED"),
            (ConcurrencyConflictError(), "INTERNAL"),
            (KeyError("boom"), "INTERNAL"),
        ],
    )
    def test_each_error_maps_to_its_contract_code(self, error: Exception, code: str) -> None:
        assert error_code(error) == code

    def test_internal_errors_never_leak_their_details(self) -> None:
        assert public_message(RuntimeError("password=hunter2")) == "internal error"

    def test_rule_violations_explain_themselves(self) -> None:
        assert public_message(InvalidContentError("content must not be empty")) == "content must not be empty"
