"""A real nginx (Debian package) running ``ops/nginx.conf`` on 127.0.0.1 in front of a test upstream.

The substitutions are the ones ``ops/README.md`` describes for a local run: upstream and listen
address, runtime paths under a temporary prefix. The tests that use it: ``tests/ops/test_ops.py``
(the config itself) and ``tests/producers/gateway/test_nginx.py`` (job events through the proxy).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from llmq.localredis import free_port
from tests.support.external import need_tool

__all__ = ["NGINX_INSTALL", "nginx_binary", "render_conf", "running_nginx"]

NGINX_INSTALL = "apt-get install -y --no-install-recommends nginx"


def nginx_binary() -> str:
    """nginx's path (skipped locally when missing, a failure under ``CI=true``)."""
    return need_tool("nginx", NGINX_INSTALL, also=("/usr/sbin/nginx",))


def render_conf(text: str, *, upstream_port: int, listen_port: int, prefix: Path, access_log: bool = True) -> str:
    """ops/nginx.conf for 127.0.0.1: upstream, listen address and runtime paths replaced."""
    replacements = {
        "server gateway:8000;": f"server 127.0.0.1:{upstream_port};",
        "listen 8080;": f"listen 127.0.0.1:{listen_port};",
        "/var/run/": f"{prefix}/",
        "/var/cache/nginx/": f"{prefix}/",
    }
    if not access_log:
        replacements["access_log /dev/stdout;"] = "access_log off;"
    for old, new in replacements.items():
        assert old in text, f"ops/nginx.conf no longer contains {old!r}: update ops/README.md and this helper"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def running_nginx(conf_text: str, upstream_port: int, prefix: Path, *, access_log: bool = True) -> Iterator[int]:
    """nginx in the foreground with ``conf_text`` rendered for 127.0.0.1; yields its port once it accepts."""
    binary = nginx_binary()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        render_conf(conf_text, upstream_port=upstream_port, listen_port=port, prefix=prefix, access_log=access_log)
    )
    argv = [binary, "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"]
    log = prefix / "nginx.stderr"
    with log.open("wb") as stderr, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr) as proc:
        try:
            for _ in range(400):  # bounded: nginx listens within a few hundred ms even under load
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"nginx did not listen on {port}: {log.read_text()}")
            yield port
        finally:
            proc.terminate()
            proc.wait(10)
