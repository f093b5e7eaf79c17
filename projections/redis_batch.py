"""Many Redis commands in one write, their replies read back without callbacks: the
projector's bulk writes (unread counts, inbox rows, live frames).

redis-py's pipeline spends Python per command on argument checks, packing and a reply
callback. A message to a 1,000-member group makes some 3,000 commands for unread counts alone:
in a group run the counters' pipelined write was 46% of the projector's samples (py-spy), and
its packing alone 21%. Here hiredis packs each command in C and the raw replies come back in
order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ResponseError

Arg = str | bytes | int | float
Command = tuple[Arg, ...]


def execute(
    client: redis.Redis, commands: Sequence[Command], *, then: Callable[[], Sequence[Command]] | None = None
) -> list[Any]:
    """Run `commands` in order on one connection; returns their replies. An error reply raises
    (the first one) once every reply is read, so the connection stays in step.

    `then` builds more commands once `commands` are written (Redis starts on them meanwhile);
    they follow on the same connection and their replies come after, in the same read."""
    if not commands and then is None:
        return []
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        sent = _send(connection, commands)
        if then is not None:
            sent += _send(connection, then())
        replies: list[Any] = []
        first_error: ResponseError | None = None
        for _ in range(sent):
            try:
                replies.append(connection.read_response())
            except ResponseError as error:
                first_error = first_error or error
                replies.append(error)
    except BaseException:
        connection.disconnect()  # replies may still be in flight: never reuse it
        raise
    finally:
        pool.release(connection)
    if first_error is not None:
        raise first_error
    return replies


def _send(connection: Any, commands: Sequence[Command]) -> int:
    if commands:
        connection.send_packed_command([b"".join([hiredis.pack_command(command) for command in commands])])
    return len(commands)
