"""The 'raw client' baseline: one asyncio process, aiohttp streaming + redis.asyncio PUBLISH per delta.

This is the notes' physical limit of a single process on this box (no queue, no Celery). Prints
one JSON line. Used by ``queue_bench.py``; not a product path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time


async def _one(session, url, rds, sem, i, done, errors) -> None:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": f"raw {i}"}],
        "max_tokens": 64,
        "stream_options": {"include_usage": True},
    }
    channel = f"bench:raw:{i}"
    async with sem:
        try:
            async with session.post(url, json=body) as resp:
                resp.raise_for_status()
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                        chunk = json.loads(line[6:])
                        choices = chunk.get("choices")
                        if choices and choices[0]["delta"].get("content"):
                            await rds.publish(channel, choices[0]["delta"]["content"])
            await rds.publish(channel, "[DONE]")
            done.append(time.perf_counter())
        except Exception as exc:  # counted, reported
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1


async def main(args: argparse.Namespace) -> None:
    import aiohttp
    import redis.asyncio as aredis

    rds = aredis.Redis.from_url(args.redis, max_connections=args.concurrency)
    sem = asyncio.Semaphore(args.concurrency)
    done: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(_one(session, args.url, rds, sem, i, done, errors) for i in range(args.jobs)))
        wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await rds.aclose()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ok": len(done), "errors": errors, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200)
    asyncio.run(main(p.parse_args()))
