"""Model names as a newcomer types them: bare names run, typos are refused before anything is enqueued.

A real in-process worker with a config file (routes, a model family) publishes its catalog; the
producers (Client and AsyncClient alike) check every name against it, with suggestions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producers import AsyncClient, Client, InvalidJobError
from producers.catalog import LiveCatalog
from producers.settings import ProducerSettings
from simulator.app import SimulatorThread
from tests.support.brokers import Broker, queued_count
from tests.support.doubles import FakeClock
from workers.contract.catalog import ModelCatalog, catalog_from_config
from workers.contract.presence import WORKERS_KEY
from workers.runtime.presence import PresencePublisher
from workers.settings import Settings

CONFIG = """
[routes]
cheap = ["openai:gpt-4o-mini"]

[model_families]
"llama*" = "ollama"
"""
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "llmq.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def worker_settings(redis_url: str, broker: Broker, config_file: Path) -> Settings:
    return Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue, config=str(config_file),
        pool="threads", concurrency=8, coalesce_ms=20.0,
    )  # fmt: skip


def _queued(redis_client: redis.Redis, queue: str) -> int:
    return queued_count(redis_client, queue) + len(list(redis_client.scan_iter(match="llmq:job:*")))


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gpt-4o-mini", "openai"), ("claude-3-5-haiku", "anthropic"), ("llama3.1", "ollama"), ("cheap", "openai")],
)
def test_bare_names_and_aliases_run_end_to_end(
    worker: object, client: Client, simulator: SimulatorThread, model: str, provider: str
) -> None:
    result = client.submit({"model": model, "messages": HELLO}).result(timeout=60)
    assert result.status == "succeeded", result.error
    assert result.model_used is not None and result.model_used.startswith(f"{provider}:")


#: A typo, where it sits, and what the refusal must say.
TYPOS = [
    ({"model": "opneai:gpt-4o"}, "model", ["unknown provider 'opneai'", "did you mean 'openai:gpt-4o'?"]),
    ({"model": "gtp-4o-mini"}, "model", ["unknown model 'gtp-4o-mini'", "did you mean 'gpt-4o-mini'?"]),
    ({"model": "cheep"}, "model", ["not a route alias (known: cheap, default)", "did you mean 'cheap'?"]),
    ({"model": "openai:gtp-4o-mini"}, "model", ["no price known", "did you mean 'openai:gpt-4o-mini'?"]),
    (
        {"model": "cheap", "fallbacks": ["openai:gpt-4o", "anthropic:claude-sonet-4-5"]},
        "fallbacks.1",
        ["did you mean 'anthropic:claude-sonnet-4-5'?"],
    ),
]


@pytest.mark.parametrize(("fields", "where", "says"), TYPOS, ids=[t[0]["model"] + t[1] for t in TYPOS])
def test_typos_are_refused_before_anything_is_enqueued(
    worker: object, client: Client, redis_client: redis.Redis, fields: dict, where: str, says: list[str]
) -> None:
    with pytest.raises(InvalidJobError) as refused:
        client.submit({**fields, "messages": HELLO})
    message = str(refused.value)
    assert message.startswith(f"invalid job: {where}: "), message
    assert all(part in message for part in says), message
    assert [".".join(map(str, e["loc"])) for e in refused.value.errors] == [where]
    assert _queued(redis_client, client.queue) == 0
    with pytest.raises(InvalidJobError):
        client.validate({**fields, "messages": HELLO})


@pytest.mark.parametrize(("fields", "where", "says"), TYPOS, ids=[t[0]["model"] + t[1] for t in TYPOS])
async def test_the_async_client_refuses_the_same(
    worker: object, redis_url: str, broker: Broker, fields: dict, where: str, says: list[str]
) -> None:
    settings = ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue)
    async with AsyncClient(settings=settings) as client:
        with pytest.raises(InvalidJobError) as refused:
            await client.submit({**fields, "messages": HELLO})
    assert all(part in str(refused.value) for part in says), str(refused.value)


def test_an_alias_a_worker_just_started_with_is_accepted_at_once(
    worker: object, client: Client, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    client.catalog = LiveCatalog(client.queue, clock=clock)
    client.validate({"model": "cheap", "messages": HELLO})  # the catalog is cached now
    newer = catalog_from_config({"routes": {"fresh": ["openai:gpt-4o"]}})
    publisher = PresencePublisher(redis_client, "newer-worker", [client.queue], newer)
    publisher.start()
    try:
        clock.now += 1  # well inside the cache's life, past the recheck interval
        client.validate({"model": "fresh", "messages": HELLO})
        with pytest.raises(InvalidJobError, match="did you mean 'fresh'"):
            client.validate({"model": "fresj", "messages": HELLO})
    finally:
        publisher.stop()


@pytest.fixture
def no_worker_client(redis_url: str, broker: Broker, config_file: Path) -> Iterator[Client]:
    settings = ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue)
    with Client(settings=settings) as client:
        yield client


def test_without_a_worker_or_a_config_file_no_name_is_refused_on_a_guess(no_worker_client: Client) -> None:
    assert no_worker_client.catalog.get(no_worker_client.redis) is None
    for model in ("gtp-4o", "my-alias", "groq:llama-3.3-70b"):  # an alias or provider a worker may well have
        no_worker_client.validate({"model": model, "messages": HELLO})


def test_without_a_worker_the_config_file_decides(redis_url: str, broker: Broker, config_file: Path) -> None:
    settings = ProducerSettings(redis_url=redis_url, broker_url=broker.url, queue=broker.queue, config=str(config_file))
    with Client(settings=settings) as client:
        client.validate({"model": "cheap", "messages": HELLO})
        client.validate({"model": "llama3", "messages": HELLO})
        with pytest.raises(InvalidJobError, match="did you mean 'cheap'"):
            client.validate({"model": "cheep", "messages": HELLO})
        with pytest.raises(InvalidJobError, match="did you mean 'openai:gpt-4o'"):
            client.validate({"model": "opneai:gpt-4o", "messages": HELLO})
        client.validate({"model": "openai:gtp-4o-mini", "messages": HELLO})  # no price table here: the worker's call
        # the file changes (a route added): read again
        config_file.write_text(CONFIG + "\n[routes\n")  # not TOML for a moment: no check, no crash
        client.catalog._at = -1e18
        client.validate({"model": "cheep", "messages": HELLO})
        config_file.write_text(CONFIG.replace("cheap =", 'cheep = ["openai:gpt-4o"]\ncheap ='))
        client.catalog._at = -1e18
        client.validate({"model": "cheep", "messages": HELLO})


def test_a_stopped_workers_catalog_is_gone_with_it(redis_url: str, redis_client: redis.Redis, client: Client) -> None:
    publisher = PresencePublisher(redis_client, "w1", [client.queue], ModelCatalog())
    publisher.start()
    assert client.catalog.get(client.redis, fresh=True) == ModelCatalog()
    publisher.stop()
    assert redis_client.smembers(WORKERS_KEY) == set()
    assert client.catalog.get(client.redis, fresh=True) is None
    other_queue = PresencePublisher(redis_client, "w2", ["elsewhere"], ModelCatalog())
    other_queue.start()
    try:
        assert client.catalog.get(client.redis, fresh=True) is None  # a worker of another queue says nothing here
    finally:
        other_queue.stop()


def test_while_no_worker_runs_a_typo_the_last_workers_would_refuse_is_warned_of_not_refused(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers of the queue ran and stopped: their catalog is kept, so a producer with no config file
    says at submit what they would refuse (once per name), and still enqueues: a config change may come
    with the next worker, and a name is never refused on a guess."""
    from workers.contract.presence import last_catalog_key

    queue = "stopped-workers"
    gone = PresencePublisher(
        redis_client, "gone-worker", [queue], catalog_from_config({"routes": {"cheap": ["openai:gpt-4o-mini"]}})
    )
    gone.start()
    gone.stop()  # its presence is gone; what it ran with stays
    assert redis_client.exists(last_catalog_key(queue)) and redis_client.ttl(last_catalog_key(queue)) > 86400
    settings = ProducerSettings(redis_url=redis_url, queue=queue)
    with Client(settings=settings) as client, caplog.at_level("WARNING", logger="llmq.producer"):
        for _ in range(2):
            assert client.submit({"model": "opneai:gpt-4o", "messages": HELLO}).enqueued
        assert client.submit({"model": "cheap", "messages": HELLO}).enqueued
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "would refuse" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "unknown provider 'opneai'" in warnings[0] and "did you mean 'openai:gpt-4o'?" in warnings[0]
    assert f"the workers that last ran on queue '{queue}' would refuse it" in warnings[0]
