"""A query sent now whose rows are read later.

On a psycopg connection in pipeline mode a statement waits in the pipeline until something
needs a result; reading the rows of one query then sends everything queued, so a batch's reads
travel with its writes in one round trip. Outside a pipeline the query runs at once and the
rows are simply read later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import Connection
from psycopg.rows import tuple_row


def deferred_query(connection: Connection[Any], statement: Any, params: Any = None) -> Callable[[], list[tuple[Any, ...]]]:
    cursor = connection.cursor(row_factory=tuple_row)
    cursor.execute(statement, params)

    def rows() -> list[tuple[Any, ...]]:
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    return rows
