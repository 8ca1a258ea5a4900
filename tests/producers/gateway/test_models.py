"""What an OpenAI SDK user does first: list the models, then call one by its bare name.

The official ``openai`` SDK, unchanged, against the gateway; a real in-process worker with a config
file behind it publishes what it accepts.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.support.brokers import Broker
from workers.settings import Settings


@pytest.fixture
def worker_settings(redis_url: str, broker: Broker, tmp_path: Path) -> Settings:
    config = tmp_path / "llmq.toml"
    config.write_text('[routes]\ncheap = ["openai:gpt-4o-mini"]\n\n[models."anthropic:claude-haiku-4-5"]\nrpm = 50\n')
    return Settings(
        redis_url=redis_url, broker_url=broker.url, queue=broker.queue, config=str(config),
        pool="threads", concurrency=8, coalesce_ms=20.0,
    )  # fmt: skip


def test_models_list_shows_aliases_and_configured_models(sdk: openai.OpenAI) -> None:
    models = list(sdk.models.list())
    assert [(m.id, m.owned_by, m.object) for m in models] == [
        ("cheap", "llmqueue", "model"),
        ("default", "llmqueue", "model"),
        ("anthropic:claude-haiku-4-5", "anthropic", "model"),
        ("openai:gpt-4o-mini", "openai", "model"),
    ]
    assert sdk.models.retrieve("gpt-4o-mini").owned_by == "openai"  # a bare name of a family exists
    assert sdk.models.retrieve("cheap").owned_by == "llmqueue"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gtp-4o-mini")
    assert missing.value.code == "model_not_found" and "did you mean 'gpt-4o-mini'?" in missing.value.message


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "cheap"])
def test_a_chat_call_with_a_bare_name_works(sdk: openai.OpenAI, model: str) -> None:
    completion = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.content


def test_a_model_typo_is_a_404_naming_the_model_meant(sdk: openai.OpenAI) -> None:
    for model, meant in [("gtp-4o-mini", "'gpt-4o-mini'"), ("opneai:gpt-4o", "'openai:gpt-4o'"), ("cheep", "'cheap'")]:
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        assert f"did you mean {meant}?" in missing.value.message, missing.value.message


def test_the_models_list_needs_a_token(sdk_gateway: object, sdk: openai.OpenAI) -> None:
    anonymous = openai.OpenAI(base_url=str(sdk.base_url), api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        list(anonymous.models.list())
    anonymous.close()


def test_an_anonymous_gateway_serves_the_sdk_whatever_key_it_sends(redis_url: str, worker: object) -> None:
    """``llmq gateway --allow-anonymous`` with no tokens: the SDK refuses to start without some api_key
    and sends it; with no token configured none can be wrong, so it is the anonymous tenant's call."""
    from producers.gateway import GatewaySettings, create_gateway
    from producers.gateway.server import GatewayThread

    with GatewayThread(create_gateway(GatewaySettings(redis_url=redis_url, allow_anonymous=True))) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="anything", max_retries=0, timeout=60)
        try:
            assert "default" in [m.id for m in client.models.list()]
            completion = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20
            )
            assert completion.choices[0].finish_reason == "stop" and completion.model == "openai:gpt-4o-mini"
        finally:
            client.close()


def test_a_base_url_without_v1_or_an_endpoint_not_served_is_a_404_saying_so(sdk_gateway: object) -> None:
    from producers.gateway.server import GatewayThread
    from tests.producers.gateway.conftest import SDK_TOKEN

    assert isinstance(sdk_gateway, GatewayThread)
    hello = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (sdk_gateway.url, "Did you mean POST /v1/chat/completions? The gateway's API is under /v1"),  # no /v1
        (f"{sdk_gateway.url}/v1/v1", "Did you mean POST /v1/chat/completions?"),  # /v1 twice
    ]
    for base_url, says in cases:
        client = openai.OpenAI(base_url=base_url, api_key=SDK_TOKEN, max_retries=0, timeout=30)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(**hello)  # type: ignore[call-overload]
        assert missing.value.code == "unknown_url" and says in missing.value.message, missing.value.message
        client.close()
    client = openai.OpenAI(base_url=f"{sdk_gateway.url}/v1", api_key=SDK_TOKEN, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    message = missing.value.message
    assert "POST /v1/embeddings" in message and "This gateway serves POST /v1/chat/completions" in message
    client.close()


def test_a_misspelt_argument_is_a_400_naming_the_one_meant(sdk_gateway: object) -> None:
    from producers.gateway.server import GatewayThread
    from tests.producers.gateway.conftest import SDK_TOKEN

    assert isinstance(sdk_gateway, GatewayThread)
    client = openai.OpenAI(base_url=f"{sdk_gateway.url}/v1", api_key=SDK_TOKEN, max_retries=0, timeout=30)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body={"max_tokns": 5}
        )
    assert "Unrecognized request argument supplied: max_tokns (did you mean 'max_tokens'?)" in refused.value.message
    client.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_no_worker_can_take_is_a_503_saying_so_not_a_wait(
    redis_url: str, redis_client: object, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The gateway on a queue no live worker consumes: the SDK's call ends after LLMQ_WORKER_CHECK_S with
    a 503 naming the queue (and Retry-After, so the SDK's own retries wait), the job cancelled."""
    import redis

    from producers.gateway import GatewaySettings, create_gateway
    from producers.gateway.server import GatewayThread

    assert isinstance(redis_client, redis.Redis)
    monkeypatch.setenv("LLMQ_WORKER_CHECK_S", "0.5")
    settings = GatewaySettings(redis_url=redis_url, allow_anonymous=True, queue="nobody-home")
    with GatewayThread(create_gateway(settings)) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as refused:
            created = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
            list(created) if stream else None  # type: ignore[call-overload]
        client.close()
    response = refused.value.response
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    # the job exists (cancelled here; left queued when Redis is full): its id, as on every answer
    assert redis_client.exists(f"llmq:job:{{{response.headers['x-llmq-job-id']}}}:cancel") == 1
    assert refused.value.code == "no_worker"
    assert "The job was not started: no worker consumes queue 'nobody-home'" in refused.value.message
    assert len(list(redis_client.scan_iter(match="llmq:job:*:cancel"))) == 1  # the job's cancel, asked once
