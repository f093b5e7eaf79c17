"""`loopify audit`: query the event log from the command line, as a table or as JSON lines.

Ids, times and the limit are parsed by argparse, so a typo is refused (exit code 2, message on
stderr) before any database is opened. The query itself is `application.audit.AuditLog`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, TextIO
from uuid import UUID

from application.audit import AuditEntry, AuditLog, AuditQuery, InvalidAuditQueryError, iso_utc
from application.messaging import MessagingApplication

USAGE_ERROR = 2  # argparse's exit code for bad arguments; audit's own checks use the same
SUMMARY_MAX_CHARS = 120  # one table row stays on one line of a wide terminal; --json has it all
TABLE_COLUMNS = ("POSITION", "AT", "CONVERSATION", "TYPE", "ACTOR", "DATA")


def add_audit_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="query the event log: who did what, when",
        description="List events from the log in log order. Filters combine with AND.",
    )
    audit.add_argument("--conversation", type=parse_id, metavar="ID", help="events of one conversation")
    audit.add_argument("--actor", metavar="USER", help="events caused by one user")
    audit.add_argument("--message", type=parse_id, metavar="ID", help="one message's send, edits and deletion")
    audit.add_argument("--since", type=parse_instant, metavar="ISO8601", help="at or after (no zone means UTC)")
    audit.add_argument("--until", type=parse_instant, metavar="ISO8601", help="before (no zone means UTC)")
    audit.add_argument("--limit", type=parse_limit, metavar="N", help="at most N entries, oldest first")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")


def run_audit(args: argparse.Namespace, app: MessagingApplication, out: TextIO, err: TextIO | None = None) -> int:
    err = err or sys.stderr  # resolved per call, so a redirected or captured stderr is honoured
    try:
        query = audit_query(args)
    except InvalidAuditQueryError as error:
        err.write(f"loopify audit: error: {error}\n")
        return USAGE_ERROR
    entries = AuditLog(app).iter_entries(query)
    if args.json:
        for entry in entries:  # streamed: a whole-log export never sits in memory
            out.write(json_line(entry) + "\n")
    else:
        out.writelines(line + "\n" for line in table_lines(entries))
    out.flush()
    return 0


def audit_query(args: argparse.Namespace) -> AuditQuery:
    """The query the arguments ask for; raises `InvalidAuditQueryError` for an empty time range.

    Callers may run it before opening the event store, so a contradictory range is refused
    without starting a database.
    """
    return AuditQuery(
        conversation_id=args.conversation,
        actor=args.actor,
        message_id=args.message,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )


# ---- argument types --------------------------------------------------------------------------


def parse_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {raw!r}") from None


def parse_instant(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # the log is in UTC; so are bare times
    return moment


def parse_limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {raw!r}")
    return limit


# ---- output ----------------------------------------------------------------------------------


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "position": entry.position,
        "conversationId": str(entry.conversation_id),
        "type": entry.type,
        "actor": entry.actor,
        "at": iso_utc(entry.at),
        "data": entry.data,
    }


def json_line(entry: AuditEntry) -> str:
    # ASCII-escaped, so the output is valid on any terminal encoding and survives any pipe.
    return json.dumps(entry_json(entry))


def table_lines(entries: Iterable[AuditEntry]) -> list[str]:
    """An aligned table (header first); it needs every row to size its columns."""
    rows = [
        (str(e.position), iso_utc(e.at), str(e.conversation_id), e.type, e.actor or "-", summarise(e.data))
        for e in entries
    ]
    if not rows:
        return ["no matching events"]
    widths = [max(len(row[i]) for row in [TABLE_COLUMNS, *rows]) for i in range(len(TABLE_COLUMNS))]
    lines = []
    for row in [TABLE_COLUMNS, *rows]:
        cells = [row[0].rjust(widths[0])] + [cell.ljust(width) for cell, width in zip(row[1:-1], widths[1:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def summarise(data: dict[str, Any]) -> str:
    """`key=value` pairs; values as JSON, so newlines and quotes in content stay on one line."""
    # Fields that are None (no parent, no client id, no title) are the common case: only noise.
    pairs = (f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in data.items() if value is not None)
    text = " ".join(pairs)
    if len(text) > SUMMARY_MAX_CHARS:
        return text[: SUMMARY_MAX_CHARS - 1] + "…"
    return text
