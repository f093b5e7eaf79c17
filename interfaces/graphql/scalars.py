"""Custom GraphQL scalars."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tartiflette import Scalar
from tartiflette.constants import UNDEFINED_VALUE
from tartiflette.language.ast import StringValueNode


class DateTimeScalar:
    """ISO 8601 timestamps in UTC (`2026-11-27T01:05:06.123456Z`)."""

    def coerce_output(self, value: Any) -> str:
        if isinstance(value, datetime):
            return value.isoformat().replace("+00:00", "Z")
        return str(value)

    def coerce_input(self, value: Any) -> datetime:
        if not isinstance(value, str):
            raise TypeError("DateTime must be an ISO 8601 string")
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    def parse_literal(self, ast: Any) -> Any:
        if isinstance(ast, StringValueNode):
            try:
                return self.coerce_input(ast.value)
            except ValueError:
                return UNDEFINED_VALUE
        return UNDEFINED_VALUE


def register_scalars(schema_name: str) -> None:
    Scalar("DateTime", schema_name=schema_name)(DateTimeScalar)
