"""Named providers through the real queue: a worker configured with ``[providers.*]`` entries of
every wire format the simulator speaks, falling back from one provider type to the next."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from producers import Client
from simulator.app import SimulatorThread
from simulator.env import provider_config, provider_env
from tests.conftest import Broker
from workers.accounting.ledger import GLOBAL_SCOPE, Ledger, to_micros
from workers.accounting.prices import PriceBook, price_sources
from workers.contract import CompletionResult
from workers.routes import load_config
from workers.runtime.app import close_runner, create_app
from workers.settings import Settings

#: One model of each provider type the simulator serves (priced by genai-prices: azure, google,
#: aws, openai), as ``<provider name>:<model>``.
MODELS = {
    "azure": "azure:gpt-4o",
    "gemini": "gemini:gemini-2.5-flash",
    "bedrock": "bedrock:us.amazon.nova-micro-v1:0",
    "openai": "openai:gpt-4o-mini",
}
ORDER = ["azure", "gemini", "bedrock", "openai"]
PROMPT = [{"role": "user", "content": "which provider answers"}]


def _limited(model: str) -> str:
    """The model with a plan that answers every request with a 429 (``retry-after: 1``)."""
    return f"{model}~429@1*"


@pytest.fixture
def config_path(tmp_path: Path, simulator: SimulatorThread) -> Path:
    # no retries: a 429 moves the chain on at once (the retry wrapper is tested elsewhere)
    models = "".join(
        f'[models."{m}{plan}"]\nmax_retries = 0\n\n' for m in MODELS.values() for plan in ("", "~429@1*", "~503*")
    )
    path = tmp_path / "llmq.toml"
    path.write_text(provider_config(simulator.url) + "\n" + models)
    return path


@pytest.fixture
def worker_settings(redis_url: str, broker: Broker, config_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        broker_url=broker.url,
        queue=broker.queue,
        pool="threads",
        concurrency=4,
        coalesce_ms=20.0,
        claim_lease_s=10,
        config=str(config_path),
    )


@pytest.fixture
def named_worker(worker_settings: Settings, simulator: SimulatorThread) -> Iterator[object]:
    app = create_app(worker_settings, provider_env=provider_env(simulator.url))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=10) as w:
        yield w
    close_runner(app)


def _spent(redis_url: str) -> Decimal:
    ledger = Ledger(redis.Redis.from_url(redis_url))
    try:
        status = next(s for s in ledger.show().scopes if s.scope == GLOBAL_SCOPE)
        return Decimal(str(status.spent_usd))
    finally:
        ledger.client.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_a_429_moves_the_chain_across_four_provider_types_and_each_answer_is_priced_by_its_type(
    named_worker: object, client: Client, simulator: SimulatorThread, redis_url: str, config_path: Path, stream: bool
) -> None:
    prices = PriceBook(sources=price_sources(load_config(config_path).providers))
    before = _spent(redis_url)
    results: list[CompletionResult] = []
    # one chain through all four: the first three answer 429, the last one answers
    chain = [_limited(MODELS[t]) for t in ORDER[:-1]] + [MODELS[ORDER[-1]]]
    results.append(
        client.submit(
            {"model": chain[0], "fallbacks": chain[1:], "messages": PROMPT, "stream": stream, "max_tokens": 20}
        ).result(timeout=60)
    )
    # ...and each type answering once after the type before it in the ring was rate limited
    for i, kind in enumerate(ORDER):
        failing, answering = MODELS[ORDER[i - 1]], MODELS[kind]
        job = {"model": _limited(failing), "fallbacks": [answering], "messages": PROMPT, "stream": stream}
        results.append(client.submit({**job, "max_tokens": 20}).result(timeout=60))

    expected_used = [MODELS["openai"], *(MODELS[k] for k in ORDER)]
    assert [r.status for r in results] == ["succeeded"] * 5, [r.error for r in results]
    assert [r.model_used for r in results] == expected_used
    # every failed attempt is the 429 of the model before, in chain order, and cost nothing
    assert [(a.model, a.status, a.error_type, a.http_status) for a in results[0].attempts] == [
        *((m, "failed", "rate_limited", 429) for m in chain[:-1]),
        (chain[-1], "succeeded", None, None),
    ]
    for r in results[1:]:
        assert [(a.status, a.error_type) for a in r.attempts] == [("failed", "rate_limited"), ("succeeded", None)]
    # each answer is priced by its own provider type's table (genai-prices: azure, google, aws, openai)
    charged = 0  # micro-USD, as the ledger counts (each settlement rounded up)
    for r in results:
        assert r.model_used is not None and r.cost_usd is not None and r.cost_usd > 0
        assert not r.usage.estimated  # every wire format reported its usage
        price = prices.lookup(r.model_used)
        assert price.source == "genai-prices"
        cost = price.cost(r.usage)
        assert cost is not None and r.cost_usd == pytest.approx(float(cost), rel=1e-9)
        charged += to_micros(cost)
    # the ledger charged exactly the answers: the 429s cost nothing
    assert to_micros(_spent(redis_url) - before) == charged
    # the simulator saw one request per attempt, each on its own wire format's path
    assert sum(len(r.attempts) for r in results) == simulator.simulator.stats.as_json()["requests"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
def test_a_503_moves_the_chain_and_a_content_filter_ends_it_on_every_type(
    named_worker: object, client: Client, simulator: SimulatorThread, stream: bool
) -> None:
    """An outage is another model's chance; a content filter's verdict is not retried, nor handed
    to the next model (it fails the job as ``content_filtered``, whichever type said it)."""
    for i, kind in enumerate(ORDER):
        failing, answering = MODELS[kind], MODELS[ORDER[i - 1]]
        job = {"model": failing + "~503*", "fallbacks": [answering], "messages": PROMPT, "stream": stream}
        moved = client.submit({**job, "max_tokens": 20}).result(timeout=60)
        assert moved.status == "succeeded" and moved.model_used == answering, moved.error
        assert [(a.status, a.error_type) for a in moved.attempts] == [("failed", "server_error"), ("succeeded", None)]
        job = {"model": failing + "~filter", "fallbacks": [answering], "messages": PROMPT, "stream": stream}
        filtered = client.submit({**job, "max_tokens": 20}).result(timeout=60)
        assert filtered.status == "failed" and filtered.error is not None, kind
        assert (filtered.error.type, filtered.error.retryable) == ("content_filtered", False), kind
        assert [(a.model, a.status) for a in filtered.attempts] == [(failing + "~filter", "failed")], kind
        if stream:  # the text before the filter's stop was streamed, and is kept
            assert filtered.content, kind
