"""Gateway configuration and the pure pieces: token parsing, redaction, job id namespacing, the command.

No Redis needed except for the anonymous-mode check at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from producers.gateway import GatewaySettings, create_gateway, parse_tokens
from producers.gateway.auth import TokenAuth
from producers.gateway.errors import GatewayError, redact
from producers.gateway.jobs import resolve_id, storage_id
from producers.gateway.server import GatewayThread

ROOT = Path(__file__).resolve().parents[3]


def test_token_pairs_parse_with_bare_tokens_in_the_default_tenant() -> None:
    assert parse_tokens(" a1:team-a , b:2:team-b,bare ,") == {"a1": "team-a", "b:2": "team-b", "bare": "default"}
    assert parse_tokens(None) == parse_tokens("") == {}
    with pytest.raises(ValueError, match="entry 2") as info:
        parse_tokens("ok:fine,s3cret-value:bad tenant!")
    assert "s3cret" not in str(info.value)


def test_bearer_lookup() -> None:
    auth = TokenAuth({"tok-1": "a"})
    assert auth.tenant_for("Bearer tok-1") == auth.tenant_for("bearer  tok-1 ") == "a"
    for header in (None, "", "Basic dG9rLTE=", "Bearer", "Bearer tok-2", "tok-1"):
        with pytest.raises(GatewayError) as info:
            auth.tenant_for(header)
        assert info.value.status == 401
    assert TokenAuth({}, allow_anonymous=True, anonymous_tenant="anon").tenant_for(None) == "anon"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Incorrect API key provided: sk-proj-abc123***xyz.", "Incorrect API key provided: [redacted]"),
        ("header Authorization: Bearer abc.def", "header Authorization: Bearer [redacted]"),
        ("x-api-key=k-123456 rejected", "x-api-key=[redacted] rejected"),
        ("rate limited, retry in 3s", "rate limited, retry in 3s"),
    ],
)
def test_redact(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_client_ids_are_namespaced_and_server_ids_reserved() -> None:
    assert storage_id("team-a", None) is None
    assert storage_id("team-a", "order-1") == "team-a:order-1"
    assert resolve_id("team-a", "order-1") == "team-a:order-1"
    assert resolve_id("team-a", "team-b:order-1") == "team-b:order-1"  # then the tenant check says 404
    assert resolve_id("team-a", "job_" + "0" * 32) == "job_" + "0" * 32
    for bad in ("job_x", "", "-x", "a b", "x" * 200, 5):
        with pytest.raises(GatewayError) as info:
            storage_id("team-a", bad)
        assert info.value.status == 400 and info.value.param == "id"


def test_settings_errors_never_show_the_tokens() -> None:
    with pytest.raises(ValueError) as info:
        GatewaySettings(tokens={"very-secret-token": "not a tenant"})
    assert "very-secret-token" not in str(info.value)
    assert "very-secret-token" not in repr(GatewaySettings(tokens={"very-secret-token": "t"}))


def _llmq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("LLMQ_GATEWAY_TOKENS", "LLMQ_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "llmq.cli", "gateway", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_command_refuses_to_start_without_tokens() -> None:
    proc = _llmq("--port", "1")
    assert proc.returncode == 2 and "no API tokens configured" in proc.stderr and "--allow-anonymous" in proc.stderr


def test_command_reports_bad_tokens_without_echoing_them(tmp_path: Path) -> None:
    proc = _llmq("--port", "1", LLMQ_GATEWAY_TOKENS="hunter2-token:no way")
    assert proc.returncode == 2 and "entry 1" in proc.stderr and "hunter2" not in proc.stderr
    config = tmp_path / "llmq.toml"
    config.write_text('[gateway.tokens]\n"cfg-token" = "team one"\n')
    proc = _llmq("--port", "1", LLMQ_CONFIG=str(config))
    assert proc.returncode == 2 and "tokens" in proc.stderr and "cfg-token" not in proc.stderr


def test_anonymous_mode_serves_requests_without_a_token(redis_url: str) -> None:
    settings = GatewaySettings(redis_url=redis_url, allow_anonymous=True)
    with GatewayThread(create_gateway(settings)) as gw:
        created = httpx2.post(
            f"{gw.url}/v1/jobs", json={"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        )
        assert created.status_code == 202
        status = httpx2.get(f"{gw.url}/v1/jobs/{created.json()['id']}").json()
        assert status["status"] == "queued"
        # no token configured: any bearer token (an SDK's placeholder) is the anonymous tenant
        placeholder = httpx2.get(f"{gw.url}/v1/jobs/{created.json()['id']}", headers={"authorization": "Bearer nope"})
        assert placeholder.status_code == 200
    tokens = GatewaySettings(redis_url=redis_url, allow_anonymous=True, tokens={"tok-a": "team-a"})
    with GatewayThread(create_gateway(tokens)) as gw:  # tokens configured: an unknown one is a mistake
        wrong = httpx2.get(f"{gw.url}/v1/jobs/x", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "no Authorization header" in wrong.json()["error"]["message"]
        assert httpx2.get(f"{gw.url}/v1/jobs/x").status_code == 404  # no header: anonymous, no such job


def test_the_gateway_imports_only_the_contract_and_connections_from_workers() -> None:
    code = (
        "import sys, producers.gateway, producers.gateway.server, llmq.commands.gateway; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('workers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert {
        m
        for m in out.strip().split(",")
        if m != "workers" and m.split(".")[:2] not in (["workers", "contract"], ["workers", "connections"])
    } == set()


def test_the_command_says_how_the_openai_sdk_reaches_it(redis_url: str) -> None:
    """What ``llmq simulate`` does for a worker, the gateway does for an SDK user: the base_url with /v1."""
    from llmq.localredis import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LLMQ_GATEWAY_TOKENS", "LLMQ_CONFIG")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmq.cli", "gateway", "--port", str(port), "--allow-anonymous"],
        env={**env, "LLMQ_REDIS_URL": redis_url},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(30)
    said = "".join(lines)
    assert f'OpenAI SDK: OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="anything")' in said, said
