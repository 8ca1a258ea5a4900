"""The command packer of the sync clients sends exactly what redis-py's own would (workers/connections/packer.py)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import DataError

from workers.connections.packer import HiredisPacker
from workers.connections.redisclient import redis_client

ENCODER = Encoder("utf-8", "strict", False)
REDIS_PY = HiredisRespSerializer(PythonRespSerializer(6000, ENCODER.encode).pack, ENCODER.encode)

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "k", "v"),
    ("SCRIPT LOAD", "return 1"),
    (b"CLIENT SETNAME", b"x"),
    ("CLIENT\tLIST",),
    ("EVALSHA", "a" * 40, 2, "llmq:{job}:claim", b"bytes", 30000, "tok"),
    ("ZADD", "k", 1796633563.111629, "m", 0.1 + 0.2, "n", 1e20, "o", float("inf"), "p", -0.0, "q", 3.0, "r"),
    ("SET", "naïve café 東京 🎉", "\u0000\r\n$3\r\n", 2**63 - 1, -(2**63), 2**80, 0, -1),
    ("SET", bytearray(b"ba"), memoryview(b"mv"), "", b""),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_the_bytes_are_redis_pys(args: tuple[Any, ...]) -> None:
    assert b"".join(HiredisPacker().pack(*args)) == b"".join(REDIS_PY.pack(*args))


@pytest.mark.parametrize("bad", [None, True, False, object(), [1], {"a": 1}])
def test_what_redis_py_refuses_is_refused(bad: object) -> None:
    with pytest.raises(DataError):
        REDIS_PY.pack("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisPacker().pack("SET", "k", bad)


def test_the_sync_clients_pack_with_it(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        conn = client.connection_pool.get_connection()
        try:
            assert isinstance(conn._command_packer, HiredisPacker)
        finally:
            client.connection_pool.release(conn)
        client.set("packer:ü", 1.5)
        assert client.get("packer:ü") == b"1.5"
        assert client.eval("return ARGV[1] .. ARGV[2]", 0, "a", 2) == b"a2"
        with pytest.raises(redis.exceptions.DataError):
            client.set("packer:none", None)  # type: ignore[arg-type]
    finally:
        client.close()
