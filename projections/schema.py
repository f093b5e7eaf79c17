"""The Postgres read model's tables, and the generations that make rebuilds downtime-free.

Each generation of the read model lives in its own schema (`rm_g1`, `rm_g2`, ...) with its own
tracking row. Queries never name a generation: they read views in the schema `read`, which point
at the live generation. A rebuild (`loopify replay`) fills a new generation beside the live one,
then, in one transaction, catches it up, repoints the views and the pointer row, and commits:
readers switch atomically, and the live projector's next batch goes to the new generation.

Delivery and read state is kept as per-participant watermarks (`read_up_to`, `delivered_up_to`)
rather than one `message_deliveries` row per message per recipient: a message to a 1,000-member
group then costs one row, not 1,000, and "is message N read by everyone" is `min(read_up_to) >= N`.
The `message_deliveries` view derives the per-recipient rows on demand.
"""

from __future__ import annotations

from psycopg import Cursor, sql

from projections.batch_function import create_batch_function_statements

POINTER_TABLE = "loopify_read_models"  # in `public`: name -> live generation
READ_SCHEMA = "read"  # the stable names queries use
POSTGRES_MODEL = "postgres"  # the name of the Postgres read model in the pointer table

# Advisory-lock key of the projector leader (any constant; "loopify" in ASCII).
PROJECTOR_LOCK_KEY = 0x6C6F6F70696679

TABLES = ("conversations", "conversation_participants", "messages", "tracking")


def generation_schema(generation: int) -> str:
    return f"rm_g{generation}"


def create_generation_statements(generation: int) -> list[sql.Composed]:
    return create_table_statements(generation) + create_index_statements(generation)


def create_table_statements(generation: int) -> list[sql.Composed]:
    """The tables and the functions that write them (no index beyond the keys but on `messages`:
    a rebuild fills it first and indexes it afterwards)."""
    schema = sql.Identifier(generation_schema(generation))
    statements = [
        "CREATE SCHEMA IF NOT EXISTS {s}",
        """CREATE TABLE IF NOT EXISTS {s}.conversations (
            id uuid PRIMARY KEY,
            type text NOT NULL,
            title text,
            item_id text,
            started_by text NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0,
            last_message_id uuid,
            last_message_at timestamptz,
            activity_at timestamptz NOT NULL,   -- last message, else creation: the inbox order
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS {s}.conversation_participants (
            conversation_id uuid NOT NULL,
            user_id text NOT NULL,
            is_active boolean NOT NULL,
            joined_at timestamptz NOT NULL,
            left_at timestamptz,
            read_up_to bigint NOT NULL DEFAULT 0,
            last_read_at timestamptz,
            delivered_up_to bigint NOT NULL DEFAULT 0,
            last_delivered_at timestamptz,
            PRIMARY KEY (conversation_id, user_id))""",
        # The inbox of a heavy user (hundreds of conversations): walk activity order, probe membership.
        "CREATE INDEX IF NOT EXISTS conversations_by_activity ON {s}.conversations (activity_at DESC, id DESC)",
        # "my conversations": every participation of a user, then the conversation by key.
        "CREATE INDEX IF NOT EXISTS participants_by_user ON {s}.conversation_participants (user_id, conversation_id)",
        """CREATE TABLE IF NOT EXISTS {s}.messages (
            id uuid PRIMARY KEY,
            conversation_id uuid NOT NULL,
            seq bigint NOT NULL,
            position bigint NOT NULL,           -- notification id of its MessageSent: global order
            sender_id text NOT NULL,
            content text,                       -- NULL once deleted; the log keeps the history
            message_type text NOT NULL,
            parent_message_id uuid,
            client_message_id text,
            created_at timestamptz NOT NULL,
            edited_at timestamptz,
            deleted_at timestamptz)""",
        "CREATE TABLE IF NOT EXISTS {s}.tracking (name text PRIMARY KEY, position bigint NOT NULL)",
        "INSERT INTO {s}.tracking (name, position) VALUES ('postgres', 0) ON CONFLICT DO NOTHING",
    ]
    return [sql.SQL(statement).format(s=schema) for statement in statements] + create_batch_function_statements(
        generation_schema(generation), POINTER_TABLE
    )


def create_index_statements(generation: int) -> list[sql.Composed]:
    """The messages table's keys and indexes (built once over a bulk load: several times
    faster than maintaining them row by row, the GIN index above all)."""
    schema = sql.Identifier(generation_schema(generation))
    statements = [
        # First, and the slowest by far: a rebuild gives it a backend of its own.
        # Full-text search; 'simple' because chat is multilingual and full of names and slang.
        """CREATE INDEX IF NOT EXISTS messages_search ON {s}.messages
            USING gin (to_tsvector('simple', coalesce(content, '')))""",
        "CREATE UNIQUE INDEX IF NOT EXISTS messages_pkey ON {s}.messages (id)",
        # Message pages and sync: a conversation's messages by seq (unique: seq is gapless).
        "CREATE UNIQUE INDEX IF NOT EXISTS messages_conversation_seq ON {s}.messages (conversation_id, seq)",
        "CREATE INDEX IF NOT EXISTS messages_by_position ON {s}.messages (conversation_id, position)",
    ]
    return [sql.SQL(statement).format(s=schema) for statement in statements]


def point_views_statements(generation: int) -> list[sql.Composed]:
    """Repoint the stable views at a generation (run inside the switching transaction)."""
    schema = sql.Identifier(generation_schema(generation))
    read = sql.Identifier(READ_SCHEMA)
    statements: list[sql.Composed] = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {r}").format(r=read)]
    statements.append(sql.SQL("DROP VIEW IF EXISTS {r}.message_deliveries").format(r=read))
    for table in TABLES:
        statements.append(sql.SQL("DROP VIEW IF EXISTS {r}.{t}").format(r=read, t=sql.Identifier(table)))
        statements.append(
            sql.SQL("CREATE VIEW {r}.{t} AS SELECT * FROM {s}.{t}").format(r=read, t=sql.Identifier(table), s=schema)
        )
    statements.append(
        sql.SQL(
            """CREATE VIEW {r}.message_deliveries AS
            SELECT m.id AS message_id, p.user_id AS recipient_id,
                   CASE WHEN p.delivered_up_to >= m.seq THEN p.last_delivered_at END AS delivered_at,
                   CASE WHEN p.read_up_to >= m.seq THEN p.last_read_at END AS read_at
            FROM {r}.messages m
            JOIN {r}.conversation_participants p
              ON p.conversation_id = m.conversation_id AND p.user_id <> m.sender_id"""
        ).format(r=read)
    )
    return statements


def ensure_read_model(cursor: Cursor) -> int:
    """Create the pointer, the first generation and the views if missing; return the live one."""
    # Serialise concurrent first starts (a projector and an api node starting together): even
    # CREATE ... IF NOT EXISTS races on the system catalogue without it.
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTOR_LOCK_KEY + 1,))
    cursor.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {p} (name text PRIMARY KEY, generation int NOT NULL,"
            " switched_at timestamptz NOT NULL DEFAULT now())"
        ).format(p=sql.Identifier(POINTER_TABLE))
    )
    generation = live_generation(cursor)
    if generation is None:
        generation = 1
        for statement in create_generation_statements(generation):
            cursor.execute(statement)
        for statement in point_views_statements(generation):
            cursor.execute(statement)
        cursor.execute(
            sql.SQL("INSERT INTO {p} (name, generation) VALUES (%s, %s)").format(p=sql.Identifier(POINTER_TABLE)),
            (POSTGRES_MODEL, generation),
        )
    else:  # a generation made by an older version may lack the functions, or have older ones
        for statement in create_batch_function_statements(generation_schema(generation), POINTER_TABLE):
            cursor.execute(statement)
    return generation


def live_generation(cursor: Cursor, *, lock: str | None = None) -> int | None:
    """The live generation; `lock="SHARE"` holds off a switch until this transaction ends."""
    clause = {None: "", "SHARE": " FOR SHARE", "UPDATE": " FOR UPDATE"}[lock]
    cursor.execute(
        sql.SQL("SELECT generation FROM {p} WHERE name = %s" + clause).format(p=sql.Identifier(POINTER_TABLE)),
        (POSTGRES_MODEL,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return int(row[0] if not isinstance(row, dict) else row["generation"])
