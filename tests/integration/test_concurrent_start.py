"""Several nodes starting together on a fresh database all come up (the composition root
creates the event store under `schema_creation_lock`)."""

from __future__ import annotations

import threading

from application.messaging import MessagingApplication
from infrastructure.event_store import schema_creation_lock
from infrastructure.postgres_url import parse_database_url

NODES = 3


class TestConcurrentStart:
    def test_three_nodes_creating_the_event_store_at_once_all_succeed(self, database_url: str) -> None:
        errors: list[BaseException] = []
        started = threading.Barrier(NODES)

        def start_a_node() -> None:
            started.wait(timeout=30)
            try:
                with schema_creation_lock(database_url):
                    app = MessagingApplication(env=parse_database_url(database_url).eventsourcing_env())
                app.close()
            except BaseException as error:  # collected, then asserted below
                errors.append(error)

        nodes = [threading.Thread(target=start_a_node) for _ in range(NODES)]
        for node in nodes:
            node.start()
        for node in nodes:
            node.join(timeout=60)

        assert errors == []
        assert not any(node.is_alive() for node in nodes)
