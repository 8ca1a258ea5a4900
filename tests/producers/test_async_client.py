"""The asyncio client against a real worker: submit, stream (live and replayed), result, cancel."""

from __future__ import annotations

import asyncio

from producers import AsyncClient
from simulator.app import SimulatorThread


def test_submit_stream_replay_and_result(worker, redis_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url) as client:
            handle = await client.submit(
                {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}
            )
            events = [e async for e in handle.stream(timeout=30)]
            assert [e.seq for e in events] == list(range(len(events)))
            assert events[0].type == "start" and events[-1].type == "done"
            result = await handle.result(timeout=5)
            text = "".join(e.text for e in events if e.type == "delta")
            assert result.status == "succeeded" and text == result.content and text
            # after the end: the same events again from the replay Stream, deltas hidden on request
            quiet = [e async for e in client.stream(handle.id, timeout=5, deltas=False)]
            assert [e.type for e in quiet] == [e.type for e in events if e.type != "delta"]
            duplicate = await client.submit(
                {"id": handle.id, "model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "a"}]}
            )
            assert not duplicate.enqueued  # the same id is one job

    asyncio.run(main())


def test_cancel_ends_a_running_stream(worker, redis_url: str, simulator: SimulatorThread) -> None:
    simulator.simulator.config.tokens_per_s = 10.0  # 20 tokens over ~2 s

    async def main() -> None:
        async with AsyncClient(redis_url) as client:
            handle = await client.submit(
                {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "b"}]}
            )
            seen = []
            async for event in handle.stream(timeout=30):
                seen.append(event.type)
                if event.type == "delta" and seen.count("delta") == 1:
                    assert await handle.cancel()
            assert seen[-1] == "cancelled"
            result = await handle.result(timeout=5)
            assert result.status == "cancelled" and len(result.content or "") > 0

    asyncio.run(main())
