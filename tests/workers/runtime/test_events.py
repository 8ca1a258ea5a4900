"""A worker event published to a broker that went away retries a bounded number of times, then waits
in the offline buffer: it never holds the dispatcher's lock (and with it a consumer restart or a
shutdown) for as long as the broker stays away."""

from __future__ import annotations

import threading

from llmq.localredis import ManagedRedis
from tests.support.waits import until
from workers.runtime.app import create_app
from workers.runtime.events import LLMQEventDispatcher
from workers.settings import Settings


def test_a_heartbeat_to_a_lost_broker_gives_up_and_is_buffered() -> None:
    redis_server = ManagedRedis().start()  # a Redis of its own, to stop
    app = create_app(Settings(redis_url=redis_server.url))
    connection = app.connection_for_write()
    dispatcher = app.events.Dispatcher(connection, hostname="w@test", enabled=True, buffer_while_offline=True)
    assert isinstance(dispatcher, LLMQEventDispatcher)
    try:
        dispatcher.send("worker-online", retry=True)  # connected: the broker's channel is open
        redis_server.stop()
        done = threading.Event()

        def beat() -> None:
            dispatcher.send("worker-heartbeat", retry=True)  # as celery/worker/heartbeat.py sends it
            done.set()

        threading.Thread(target=beat, daemon=True).start()
        # Celery's own dispatcher retried this once a second for as long as the broker was away
        until(done.is_set, "the heartbeat's publish to give up", 60)
        assert [event["type"] for event, _ in dispatcher._outbound_buffer] == ["worker-heartbeat"]
    finally:
        redis_server.stop()
        connection.release()
