"""A relaying process for test_events_kafka's kill -9 test: it commits a saga's events and is
killed before it can publish them.

    python -m tests.integration.relay_child <sqlite_path> <workflow_dir> <topic> <dead_broker>

It runs a one-step saga to its end through a real `Engine` on the SQLite file (outbox on), with
the engine's relay pointed at `dead_broker`, where no broker listens, so the events stay in the
outbox. It then prints the saga id and "committed" and sleeps until it is killed. Test code only.
"""

from __future__ import annotations

import sys
import time

from saga.model import TERMINAL_STATUSES
from workers.adapters.store.sqlite import SqliteStore
from workers.config import Config, KafkaConfig, SagaSection, ServiceEndpoint, TopicsConfig
from workers.scripted_participants import start_participant_server
from workers.service.engine import Engine


def main(argv: list[str]) -> int:
    sqlite_path, workflow_dir, topic, dead_broker = argv
    server, port = start_participant_server({})
    config = Config(
        kafka=KafkaConfig(brokers=[dead_broker], topics=TopicsConfig(publish=topic)),
        services={"svc": ServiceEndpoint("127.0.0.1", port)},
        saga=SagaSection(sqlite_path=sqlite_path, workflow_dir=workflow_dir),
    )
    store = SqliteStore(sqlite_path, outbox=True)
    engine = Engine(config, store)
    engine.start()
    saga, _ = engine.start_saga("relay-one", {"order": "kill-9"}, correlation_id="kill-9")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = store.get_saga(saga.saga_id)
        if state is not None and state.status in TERMINAL_STATUSES:
            break
        time.sleep(0.02)
    else:
        print("saga did not finish in 30s", flush=True)
        return 1
    waiting, _ = store.outbox_stats()
    print(f"saga {saga.saga_id} {state.status.value} outbox {waiting}", flush=True)
    print("committed", flush=True)
    time.sleep(3600)  # the test kills us here
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
