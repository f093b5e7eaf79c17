"""Fill the event log with synthetic conversations, fast, for replay and benchmark runs.

    python scripts/seed_log.py --events 1000000 --conversations 1000

Events are decided by the real `Conversation` aggregate and saved 1,000 per transaction
(bypassing the group-commit writer, which is for live traffic). The mix is what a chat
produces: mostly messages, some reads and deliveries, an occasional edit or delete.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from application.messaging import MessagingApplication  # noqa: E402
from application.ports import IndexedMessage, MessageIndexChanges  # noqa: E402
from domain.conversation import Conversation  # noqa: E402
from domain.values import ConversationType, MessageFacts  # noqa: E402

# psycopg 3.3 pipelines stalled here on single saves of ~1,500+ events (over a unix socket).
EVENTS_PER_TRANSACTION = 1000


def seed(app: MessagingApplication, events: int, conversations: int, seed_value: int = 7) -> int:
    rng = random.Random(seed_value)
    aggregates = []
    for index in range(conversations):
        users = frozenset({f"user{index}", f"user{index + 1}", f"user{(index * 7) % conversations}"})
        kind = ConversationType.GROUP if len(users) > 2 else ConversationType.DIRECT
        aggregates.append(Conversation.start(uuid.uuid4(), f"user{index}", kind, users - {f"user{index}"}, title="seed"))
    for start in range(0, len(aggregates), EVENTS_PER_TRANSACTION):
        app.save(*[e for a in aggregates[start : start + EVENTS_PER_TRANSACTION] for e in a.collect_events()])
    written, pending, index_changes = len(aggregates), 0, MessageIndexChanges()
    sent: dict[uuid.UUID, list[MessageFacts]] = {a.id: [] for a in aggregates}
    began = time.monotonic()
    while written < events:
        conversation = rng.choice(aggregates)
        sender = rng.choice(conversation.participant_ids)
        roll = rng.random()
        recent = sent[conversation.id]
        before = len(conversation.pending_events)
        if roll < 0.85 or not recent:
            message_id = uuid.uuid4()
            conversation.send_message(sender, message_id, f"message {written} about the bike, is it still available?")
            facts = MessageFacts(message_id, conversation.id, sender, conversation.last_seq, False)
            recent.append(facts)
            del recent[:-20]
            index_changes.added.append(
                IndexedMessage(message_id, conversation.id, sender, facts.seq, conversation.version, None)
            )
        elif roll < 0.95:
            conversation.mark_read(sender) or conversation.mark_delivered(sender, conversation.last_seq)
        else:
            target = recent[-1]
            if target.deleted or target.sender_id not in conversation.participant_ids:
                continue
            if roll < 0.98:
                conversation.edit_message(target.sender_id, target, "edited: still available?")
            else:
                conversation.delete_message(target.sender_id, target)
                recent[-1] = MessageFacts(target.message_id, target.conversation_id, target.sender_id, target.seq, True)
        pending += len(conversation.pending_events) - before
        if pending >= EVENTS_PER_TRANSACTION:
            written += _flush(app, aggregates, index_changes)
            index_changes, pending = MessageIndexChanges(), 0
            rate = written / (time.monotonic() - began)
            print(f"seeded {written:,} events ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return written + _flush(app, aggregates, index_changes)


def _flush(app: MessagingApplication, aggregates: list[Conversation], index_changes: MessageIndexChanges) -> int:
    events = [e for a in aggregates for e in a.collect_events()]
    if events:
        app.save(*events, message_index=index_changes)
    return len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1000)
    args = parser.parse_args()
    from bootstrap import build
    from infrastructure.settings import load_settings

    container = build(load_settings(), with_writer=False, need_redis=False)
    try:
        total = seed(container.app, args.events, args.conversations)
        print(f"seeded {total:,} events; log head is {container.app.max_position():,}")
    finally:
        container.close()


if __name__ == "__main__":
    main()
