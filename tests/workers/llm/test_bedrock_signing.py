"""A Bedrock request signed by our code verifies: against SigV4 computed independently from the
spec (itself checked on AWS's reference test vector) and against botocore's own signer."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from urllib.parse import quote

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.replay_server import CapturedRequest, ReplayServer, Reply, local_client
from workers.contract import Message, RequestParams
from workers.llm.aws import load_aws
from workers.llm.base import ChatRequest
from workers.llm.bedrock import BedrockProvider
from workers.llm.httpclient import HTTPClient

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS's documented example pair
ANSWER = b'{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":1,"totalTokens":4}}'


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_signature(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
    secret: str,
    scope: str,
    amz_date: str,
) -> str:
    """SigV4 from the spec: canonical request (each path segment URI-encoded once more, as every
    service but S3 wants), string to sign, the HMAC chain of date, region, service."""
    canonical_path = "/".join(quote(segment, safe="-_.~") for segment in path.split("/"))
    pairs = sorted(p.split("=", 1) if "=" in p else [p, ""] for p in query.split("&") if p)
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical = "\n".join(
        [method, canonical_path, canonical_query, canonical_headers, ";".join(signed), hashlib.sha256(body).hexdigest()]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_the_verifier_reproduces_the_aws_reference_vector() -> None:
    """``post-vanilla`` of AWS's SigV4 test suite (``aws4_testsuite``)."""
    signature = sigv4_signature(
        method="POST",
        path="/",
        query="",
        headers={"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        signed=["host", "x-amz-date"],
        body=b"",
        secret=SECRET,
        scope="20150830/us-east-1/service/aws4_request",
        amz_date="20150830T123600Z",
    )
    assert signature == "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"


@pytest.fixture(scope="module")
def http() -> Iterator[HTTPClient]:
    with local_client() as client:
        yield client


def _signed_request(http: HTTPClient, model: str, stream: bool = False) -> tuple[CapturedRequest, str]:
    """One call of our Bedrock provider; the request as the server received it, and its base path."""
    aws = load_aws("bedrock")
    with ReplayServer() as server:
        base = server.add("signed", Reply(200, [("Content-Type", "application/json")], ANSWER))
        provider = BedrockProvider(
            http, aws=aws, region="eu-west-3", base_url=base, credentials=aws.static_credentials(KEY_ID, SECRET)
        )
        request = ChatRequest(messages=[Message(role="user", content="héllo")], params=RequestParams(max_tokens=16))
        assert provider.complete(model, request).text == "hi"
        (captured,) = server.requests["signed"]
    return captured, "/signed"


def _authorization(header: str) -> tuple[str, list[str], str]:
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})", header
    )
    assert match, header
    return match.group(1), match.group(2).split(";"), match.group(3)


@pytest.mark.parametrize(
    "model",
    [
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.amazon.nova-micro-v1:0",
    ],
)
def test_a_bedrock_request_signed_by_our_code_verifies(http: HTTPClient, model: str) -> None:
    captured, prefix = _signed_request(http, model)
    credential, signed, signature = _authorization(captured.headers["authorization"])
    key_id, scope = credential.split("/", 1)
    amz_date = captured.headers["x-amz-date"]
    assert key_id == KEY_ID and scope == f"{amz_date[:8]}/eu-west-3/bedrock/aws4_request"
    assert {"host", "x-amz-date", "content-type"} <= set(signed)
    path = prefix + captured.path  # the model id is one percent-encoded segment of the path
    assert path.endswith(f"/model/{quote(model, safe='')}/converse")
    # 1. the spec, computed here
    mine = sigv4_signature(
        method=captured.method,
        path=path,
        query="",
        headers=captured.headers,
        signed=signed,
        body=captured.body,
        secret=SECRET,
        scope=scope,
        amz_date=amz_date,
    )
    assert mine == signature
    # 2. botocore's signer over the request as received
    received = AWSRequest(
        method=captured.method,
        url=f"http://{captured.headers['host']}{path}",
        data=captured.body,
        headers={h: captured.headers[h] for h in signed},
    )
    received.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(KEY_ID, SECRET), "bedrock", "eu-west-3")
    assert auth.signature(auth.string_to_sign(received, auth.canonical_request(received)), received) == signature
    # 3. a changed body no longer verifies
    tampered = json.loads(captured.body)
    tampered["inferenceConfig"]["maxTokens"] = 4096
    forged = mine != sigv4_signature(
        method=captured.method,
        path=path,
        query="",
        headers=captured.headers,
        signed=signed,
        body=json.dumps(tampered).encode(),
        secret=SECRET,
        scope=scope,
        amz_date=amz_date,
    )
    assert forged
