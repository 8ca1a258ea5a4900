"""Standard Webhooks signatures agree with the specification's reference package, both ways; the
address guard refuses internal networks unless allowed."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
import ssl

import pytest
import standardwebhooks

from workers.contract.webhooks import WebhookSignatureError, decode_secret, sign, signature_headers, verify
from workers.runtime.netguard import BlockedAddressError, GuardedHTTPConnection, NetGuard, tls_context

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"type":"job.succeeded","timestamp":"2026-12-07T00:00:00Z","data":{"id":"j","caf\xc3\xa9":1}}'


@pytest.mark.parametrize("timestamp", [1_765_000_000, 1_700_000_001])
def test_our_signature_is_the_reference_implementations(timestamp: int) -> None:
    reference = standardwebhooks.Webhook(SECRET)
    expected = reference.sign("msg_job_1", dt.datetime.fromtimestamp(timestamp, dt.UTC), BODY)
    assert sign(SECRET, "msg_job_1", timestamp, BODY) == expected


def test_reference_verifies_ours_and_we_verify_the_references() -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = signature_headers(SECRET, "msg_abc", now, BODY)
    standardwebhooks.Webhook(SECRET).verify(BODY, headers)
    theirs = standardwebhooks.Webhook(SECRET).sign("msg_abc", dt.datetime.fromtimestamp(now, dt.UTC), BODY)
    verify(SECRET, {"webhook-id": "msg_abc", "webhook-timestamp": str(now), "webhook-signature": theirs}, BODY)
    # several signatures (a key rotation): one match is enough
    rotated = {**headers, "webhook-signature": f"v1,AAAA {headers['webhook-signature']}"}
    verify(SECRET, rotated, BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": "msg_other"},
        {"webhook-timestamp": "1000"},
        {"webhook-signature": "v1,Zm9v"},
        {"webhook-signature": ""},
    ],
)
def test_tampering_fails_verification(change: dict[str, str]) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = {**signature_headers(SECRET, "msg_abc", now, BODY), **change}
    with pytest.raises(WebhookSignatureError):
        verify(SECRET, headers, BODY)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY, headers)


def test_secrets_must_be_base64_of_enough_bytes() -> None:
    assert decode_secret(SECRET) == bytes(range(32))
    with pytest.raises(ValueError, match="base64"):
        decode_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="16 bytes"):
        decode_secret("whsec_" + base64.b64encode(b"short").decode())


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "224.0.0.1",
     "2002:a00:1::1", "2002:7f00:1::", "64:ff9b::a00:1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"],
)  # fmt: skip
def test_internal_addresses_are_blocked(address: str) -> None:
    assert NetGuard().blocked(ipaddress.ip_address(address))


def test_public_addresses_pass_and_allowed_networks_open_a_range() -> None:
    guard = NetGuard()
    assert not guard.blocked(ipaddress.ip_address("93.184.215.14"))
    assert not guard.blocked(ipaddress.ip_address("2606:4700::1111"))
    assert not guard.blocked(ipaddress.ip_address("2002:808:808::1"))  # 6to4 of a public address
    opened = NetGuard(["127.0.0.0/8", "10.20.0.0/16"])
    assert not opened.blocked(ipaddress.ip_address("127.0.0.1"))
    assert not opened.blocked(ipaddress.ip_address("10.20.3.4"))
    assert opened.blocked(ipaddress.ip_address("10.21.0.1"))


def test_a_name_resolving_to_loopback_is_refused_before_connecting() -> None:
    with pytest.raises(BlockedAddressError, match="localhost resolves to"):
        NetGuard().resolve("localhost", 80)
    assert NetGuard(["127.0.0.0/8", "::1/128"]).resolve("localhost", 80)


def _dns(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A resolver answering from ``table`` (getaddrinfo's shape)."""

    def resolve(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    return resolve


def test_names_resolving_to_internal_addresses_are_refused_and_mixed_answers_keep_the_public_ones() -> None:
    guard = NetGuard(resolver=_dns({
        "hooks.internal.example": ["10.1.2.3"],
        "metadata.example": ["169.254.169.254"],
        "rebind.example": ["10.1.2.3", "93.184.215.14", "fd00::5"],
        "v6.example": ["2002:a00:1::1"],
    }))  # fmt: skip
    for name in ("hooks.internal.example", "metadata.example", "v6.example"):
        with pytest.raises(BlockedAddressError, match=f"{name} resolves to"):
            guard.resolve(name, 443)
    # a name answering internal and public addresses is connected to its public ones only
    assert [a for _, a in guard.resolve("rebind.example", 443)] == ["93.184.215.14"]
    assert NetGuard(["10.0.0.0/8"], resolver=_dns({"h": ["10.1.2.3"]})).resolve("h", 80)


def test_every_connection_shares_one_verifying_tls_context() -> None:
    # http.client built one per connection (plain http too), loading the CA certificates each time:
    # ~30 ms of CPU per webhook attempt
    guard = NetGuard()
    plain = GuardedHTTPConnection("hooks.example.com", 80, guard=guard, timeout=1.0, tls=False)
    secure = GuardedHTTPConnection("hooks.example.com", 443, guard=guard, timeout=1.0, tls=True)
    context = tls_context()
    assert plain._context is context and secure._context is context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
