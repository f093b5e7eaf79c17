"""Who talks to whom: users, conversations, senders, and the worker and node each user gets.

Pure and deterministic (no I/O). User ids carry a run id, so a bench against a long-lived
server (`--url`) never meets the users, conversations or rate-limit counters of an earlier run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

DIRECT = "DIRECT"
GROUP = "GROUP"


@dataclass(frozen=True)
class ConversationPlan:
    key: int
    kind: str  # DIRECT or GROUP
    members: tuple[int, ...]  # user indexes; the first one starts the conversation
    typing_only: bool = False  # typing scenario: its members only type here, nobody sends


@dataclass(frozen=True)
class Plan:
    run_id: str
    users: int
    conversations: tuple[ConversationPlan, ...]
    workers: int
    nodes: int

    def user_id(self, index: int) -> str:
        return f"bench-{self.run_id}-u{index}"

    def node_of(self, user: int) -> int:
        return user % self.nodes  # with 2 nodes, both users of a chat pair sit on different nodes

    def worker_of(self, user: int) -> int:
        return (user // self.nodes) % self.workers

    def users_of(self, worker: int) -> list[int]:
        return [user for user in range(self.users) if self.worker_of(user) == worker]

    def conversations_of(self, user: int) -> list[int]:
        return [conversation.key for conversation in self.conversations if user in conversation.members]

    def sender_slots(self, worker: int) -> list[tuple[int, int]]:
        """(conversation key, sending user) pairs this worker sends for, interleaved so that
        consecutive messages come from different users: every member of every conversation sends."""
        slots = [
            (position, conversation.key, member)
            for conversation in self.conversations
            if not conversation.typing_only
            for position, member in enumerate(conversation.members)
            if self.worker_of(member) == worker
        ]
        return [(key, member) for _, key, member in sorted(slots)]

    def typing_slots(self, worker: int) -> list[tuple[int, int]]:
        """(conversation key, typing user) pairs of this worker's typists (typing scenario)."""
        return [
            (conversation.key, member)
            for conversation in self.conversations
            if conversation.typing_only
            for member in conversation.members
            if self.worker_of(member) == worker
        ]

    def total_slots(self) -> int:
        return sum(len(conversation.members) for conversation in self.conversations if not conversation.typing_only)


def chat_pairs(users: int) -> Iterator[tuple[int, int]]:
    """Disjoint pairs first (0-1, 2-3, ...), then pairs at growing distance, never one twice."""
    seen: set[tuple[int, int]] = set()
    candidates = itertools.chain(
        ((2 * k, 2 * k + 1) for k in range(users // 2)),
        ((i, (i + distance) % users) for distance in range(2, users) for i in range(users)),
        ((i, i + 1) for i in range(1, users - 1, 2)),  # the odd neighbours the first pass skipped
    )
    for a, b in candidates:
        pair = (min(a, b), max(a, b))
        if a != b and pair not in seen:
            seen.add(pair)
            yield a, b


def plan_chat(run_id: str, users: int, conversations: int | None, workers: int, nodes: int) -> Plan:
    """Many 1:1 conversations; by default every user is in exactly one (users / 2 of them)."""
    if users < 2:
        raise ValueError("chat needs at least 2 users")
    wanted = conversations if conversations is not None else users // 2
    if not 1 <= wanted <= users * (users - 1) // 2:
        raise ValueError(f"{users} users make between 1 and {users * (users - 1) // 2} distinct 1:1 conversations")
    pairs = itertools.islice(chat_pairs(users), wanted)
    plans = tuple(ConversationPlan(key, DIRECT, pair) for key, pair in enumerate(pairs))
    return Plan(run_id, users, plans, workers, nodes)


def plan_group(run_id: str, users: int | None, conversations: int, group_size: int, workers: int, nodes: int) -> Plan:
    """`conversations` groups of `group_size` members; with fewer users than seats they overlap."""
    if group_size < 2:
        raise ValueError("a group has at least 2 members")
    total = users if users is not None else conversations * group_size
    if total < group_size:
        raise ValueError(f"a group of {group_size} needs at least {group_size} users")
    plans = tuple(
        ConversationPlan(key, GROUP, tuple((key * group_size + j) % total for j in range(group_size)))
        for key in range(conversations)
    )
    return Plan(run_id, total, plans, workers, nodes)


def plan_connections(run_id: str, users: int, workers: int, nodes: int) -> Plan:
    """Idle sockets only: users with no conversations."""
    if users < 1:
        raise ValueError("open at least 1 connection")
    return Plan(run_id, users, (), workers, nodes)


def plan_typing(run_id: str, users: int, conversations: int | None, typists: int, workers: int, nodes: int) -> Plan:
    """The chat plan, plus `typists` more users in 1:1 pairs who only ever type: each pair's
    members type to each other, so every refresh has an online peer who joined."""
    if typists < 2 or typists % 2:
        raise ValueError("--typists must be an even number of at least 2 (they type in pairs)")
    chat = plan_chat(run_id, users, conversations, workers, nodes)
    first = len(chat.conversations)
    pairs = tuple(
        ConversationPlan(first + k, DIRECT, (users + 2 * k, users + 2 * k + 1), typing_only=True) for k in range(typists // 2)
    )
    return Plan(run_id, users + typists, chat.conversations + pairs, workers, nodes)
