"""The 'direct call' baseline: our provider, HTTP client and event publisher, in threads, no queue.

Same simulator, same HTTP client (httpx2 via ``workers.llm.httpclient``), same coalescing publisher
as the worker, but called straight from a thread pool instead of through Redis and Celery: the
difference to the queue path is what the queue costs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from workers.contract import JobKeys, Message, RequestParams
from workers.jobs.events import EventPublisher
from workers.llm.base import ChatRequest
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.openai import OpenAIProvider


def main(args: argparse.Namespace) -> None:
    http = HTTPClient(HTTPSettings(max_connections=args.concurrency, http2=False))
    provider = OpenAIProvider(http, api_key=None, base_url=args.base_url)
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(args.redis, max_connections=args.concurrency + 5)
    )
    errors: dict[str, int] = {}

    def one(i: int) -> bool:
        keys = JobKeys(f"bench-direct-{args.tag}-{i}")
        pub = EventPublisher(client, keys, run=1, start_seq=-1, ttl_s=600)
        request = ChatRequest(
            messages=[Message(role="user", content=f"direct {i}")], params=RequestParams(max_tokens=64)
        )
        try:
            with provider.stream("gpt-4o-mini", request) as stream:
                for text in stream:
                    pub.delta(text)
            pub.flush()
            return True
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return False

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        ok = sum(pool.map(one, range(args.jobs)))
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ok": ok, "errors": errors, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--tag", default="0", help="job id prefix (processes side by side use different ones)")
    main(p.parse_args())
