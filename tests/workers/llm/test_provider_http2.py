"""HTTP/2 where the upstream offers it over TLS, with a real TLS server on 127.0.0.1 (h2 + ALPN).

Also: a stream closed early on HTTP/2 resets only its own stream; the shared connection stays
usable (closing must never shut down a socket that other streams multiplex on).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from workers.contract import Message, RequestParams
from workers.llm.base import ChatRequest
from workers.llm.errors import JobCancelledError
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.openai import OpenAIProvider

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a test certificate")

REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=8))
CHUNK = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'
TAIL = b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'


class H2Server:
    """Answers every request with an SSE body; ``/hang`` paths send one delta and never finish."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["h2"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.alpn: list[str | None] = []
        self.paths: list[str] = []
        self.resets = 0

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        with self.ctx.wrap_socket(raw, server_side=True) as tls:
            tls.settimeout(10)
            self.alpn.append(tls.selected_alpn_protocol())
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            paths: dict[int, str] = {}
            while data := self._recv(tls):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        paths[event.stream_id] = dict(event.headers)[":path"]
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._respond(conn, event.stream_id, paths[event.stream_id])
                    elif isinstance(event, h2.events.StreamReset):
                        self.resets += 1
                tls.sendall(conn.data_to_send())

    @staticmethod
    def _recv(tls: ssl.SSLSocket) -> bytes:
        try:
            return tls.recv(65536)
        except OSError:
            return b""

    def _respond(self, conn: h2.connection.H2Connection, stream_id: int, path: str) -> None:
        self.paths.append(path)
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/event-stream")])
        if path.startswith("/hang"):
            conn.send_data(stream_id, CHUNK % b"first")
        else:
            conn.send_data(stream_id, CHUNK % b"Hello" + CHUNK % b" h2" + TAIL, end_stream=True)


@pytest.fixture
def h2_server(tmp_path: Path) -> Iterator[H2Server]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    argv += ["-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(argv, check=True, capture_output=True)
    server = H2Server(cert, key)
    threading.Thread(target=server.serve, daemon=True).start()
    yield server
    server.listener.close()


@pytest.fixture
def tls_client(h2_server: H2Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPClient]:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # trust the test certificate
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    client = HTTPClient(HTTPSettings(max_connections=4, connect_timeout=2.0, read_timeout=10.0))
    yield client
    client.close()


def test_http2_is_negotiated_over_tls(h2_server: H2Server, tls_client: HTTPClient) -> None:
    provider = OpenAIProvider(tls_client, api_key="k", base_url=f"https://127.0.0.1:{h2_server.port}/v1")
    with provider.stream("m", REQUEST) as stream:
        assert list(stream) == ["Hello", " h2"]
    assert stream.completed and stream.finish_reason == "stop"
    assert h2_server.alpn == ["h2"] and h2_server.paths == ["/v1/chat/completions"]


def test_an_early_close_resets_only_its_stream(h2_server: H2Server, tls_client: HTTPClient) -> None:
    base = f"https://127.0.0.1:{h2_server.port}"
    hanging = OpenAIProvider(tls_client, api_key="k", base_url=f"{base}/hang/v1")
    for text in hanging.stream("m", REQUEST):
        assert text == "first"
        break  # the upstream never finishes this one; dropping the iterator closes it
    fine = OpenAIProvider(tls_client, api_key="k", base_url=f"{base}/v1")
    with fine.stream("m", REQUEST) as stream:
        assert "".join(stream) == "Hello h2"
    assert h2_server.alpn == ["h2"], "one connection, still usable after the early close"
    assert h2_server.resets == 1


def test_a_cancel_from_another_thread_wakes_a_blocked_http2_read(h2_server: H2Server, tls_client: HTTPClient) -> None:
    base = f"https://127.0.0.1:{h2_server.port}"
    stream = OpenAIProvider(tls_client, api_key="k", base_url=f"{base}/hang/v1").stream("m", REQUEST)
    errors: list[BaseException] = []
    first = threading.Event()

    def read() -> None:
        try:
            for _ in stream:
                first.set()  # then blocks: the upstream sends nothing more
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(5)
    time.sleep(0.1)
    stream.close()  # what the job's cancel watcher does
    reader.join(5)
    assert not reader.is_alive(), "the blocked HTTP/2 read was not woken"
    assert len(errors) == 1 and type(errors[0]) is JobCancelledError
    fine = OpenAIProvider(tls_client, api_key="k", base_url=f"{base}/v1")
    with fine.stream("m", REQUEST) as again:
        assert "".join(again) == "Hello h2"
    assert h2_server.alpn == ["h2"] and h2_server.resets == 1
