"""The provider simulator: an OpenAI/Anthropic/Ollama-compatible server with scripted faults.

It answers any model name with deterministic text, paced by ``latency`` (time to first token)
and ``tokens_per_s``, and counts every request it serves (``GET /_sim/stats``, reset with
``POST /_sim/reset``) so tests can assert "exactly one upstream request". Streams whose client
went away early are counted as ``closed_early``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from simulator.http import HTTPServer, Request, Responder
from simulator.protocols.base import ParsedRequest, Protocol
from simulator.protocols.openai import OpenAIProtocol, prompt_tokens_for
from simulator.script import Fault, FaultPlanner, Script, split_model, words_for

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "default_protocols"]


def default_protocols() -> list[Protocol]:
    protocols: list[Protocol] = [OpenAIProtocol()]
    try:  # the other wire formats are optional modules of the simulator
        from simulator.protocols.anthropic import AnthropicProtocol
        from simulator.protocols.ollama import OllamaProtocol
    except ImportError:
        return protocols
    return [*protocols, AnthropicProtocol(), OllamaProtocol()]


@dataclass(slots=True)
class SimConfig:
    #: Seconds before the first token.
    latency: float = 0.0
    #: Token pacing after the first one; 0 = as fast as possible.
    tokens_per_s: float = 0.0
    #: Tokens in every answer (capped by the request's max_tokens).
    completion_tokens: int = 20
    fault_rates: dict[str, float] = field(default_factory=dict)
    seed: int = 7


@dataclass(slots=True)
class Stats:
    requests: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    by_job: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    open_streams: int = 0
    closed_early: int = 0
    stream_finish_times: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_model": dict(self.by_model),
            "by_job": dict(self.by_job),
            "by_outcome": dict(self.by_outcome),
            "open_streams": self.open_streams,
            "closed_early": self.closed_early,
        }


class Simulator:
    def __init__(self, config: SimConfig | None = None, protocols: list[Protocol] | None = None) -> None:
        self.config = config or SimConfig()
        self.protocols = {p.path: p for p in (protocols or default_protocols())}
        self.planner = FaultPlanner(rates=dict(self.config.fault_rates), seed=self.config.seed)
        self.stats = Stats()

    async def handle(self, request: Request, out: Responder) -> None:
        if request.path == "/_sim/stats":
            await out.send_json(200, self.stats.as_json())
            return
        if request.path == "/_sim/reset" and request.method == "POST":
            self.stats = Stats()
            self.planner.reset()
            await out.send_json(200, {"ok": True})
            return
        if request.path in ("/", "/health", "/healthz"):
            await out.send_json(200, {"ok": True, "paths": sorted(self.protocols)})
            return
        protocol = self.protocols.get(request.path)
        if protocol is None:
            await out.send_json(404, {"error": {"message": f"no route {request.path}", "type": "not_found"}})
            return
        if request.method != "POST":
            await out.send_json(405, {"error": {"message": "use POST", "type": "invalid_request_error"}})
            return
        try:
            payload = request.json()
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            parsed = protocol.parse(payload)
        except (ValueError, KeyError, TypeError) as exc:
            await out.send_json(400, {"error": {"message": f"invalid request: {exc}", "type": "invalid_request_error"}})
            return
        job = request.headers.get("x-llmq-job-id", "")
        self.stats.requests += 1
        self.stats.by_path[request.path] += 1
        self.stats.by_model[parsed.model] += 1
        if job:
            self.stats.by_job[job] += 1
        fault = self.planner.choose(parsed.model, request.headers.get("x-llmq-sim-fault"), job)
        await self._answer(protocol, parsed, fault, out)

    def _script(self, parsed: ParsedRequest, fault: Fault) -> Script:
        count = max(1, min(self.config.completion_tokens, parsed.max_tokens))
        script = Script(tokens=words_for(parsed.prompt_text, count), prompt_tokens=prompt_tokens_for(parsed))
        if fault.kind == "tools" and parsed.tool_names:
            script.tool_call = (parsed.tool_names[0], json.dumps({"query": parsed.prompt_text[-40:]}))
            script.tokens = []
        return script

    async def _answer(self, protocol: Protocol, parsed: ParsedRequest, fault: Fault, out: Responder) -> None:
        if fault.kind not in _STREAM_FAULTS and fault.kind != "ok":
            status, headers, body = protocol.error(fault)
            self.stats.by_outcome[f"error_{fault.kind}"] += 1
            await out.send(status, body, headers=headers)
            return
        script = self._script(parsed, fault)
        count = len(script.tokens)
        finish = "tool_calls" if script.tool_call else ("length" if count >= parsed.max_tokens else "stop")
        delay = self.config.latency + (fault.arg or 0.0 if fault.kind == "slow" else 0.0)
        if not parsed.stream:
            if delay:
                await asyncio.sleep(delay + (count / self.config.tokens_per_s if self.config.tokens_per_s else 0))
            self.stats.by_outcome["ok"] += 1
            await out.send(200, protocol.complete_body(parsed, script, finish))
            return
        await self._stream(protocol, parsed, script, fault, finish, delay, out)

    async def _stream(
        self,
        protocol: Protocol,
        parsed: ParsedRequest,
        script: Script,
        fault: Fault,
        finish: str,
        delay: float,
        out: Responder,
    ) -> None:
        stats = self.stats
        stats.open_streams += 1
        gap = 1.0 / self.config.tokens_per_s if self.config.tokens_per_s > 0 else 0.0
        break_at = max(1, len(script.tokens) // 2)
        try:
            await out.start_stream(protocol.stream_content_type)
            out.write_chunk(protocol.stream_head(parsed, script))
            await out.flush()
            if delay:
                await asyncio.sleep(delay)
            for i, token in enumerate(script.tokens):
                if i == break_at and fault.kind in _STREAM_FAULTS:
                    if await self._mid_stream_fault(protocol, parsed, fault, out):
                        return
                out.write_chunk(protocol.stream_token(parsed, token))
                if gap:
                    await out.flush()
                    await asyncio.sleep(gap)
            if script.tool_call:
                out.write_chunk(protocol.stream_tool_call(parsed, *script.tool_call))
            out.write_chunk(protocol.stream_tail(parsed, script, finish, usage=fault.kind != "nousage"))
            await out.end_stream()
            stats.by_outcome["ok"] += 1
        except (ConnectionError, asyncio.CancelledError):
            stats.closed_early += 1
            out.abort()
            raise ConnectionResetError from None
        finally:
            stats.open_streams -= 1

    async def _mid_stream_fault(self, protocol: Protocol, parsed: ParsedRequest, fault: Fault, out: Responder) -> bool:
        """Inject a mid-stream fault; True when the stream is over."""
        self.stats.by_outcome[f"stream_{fault.kind}"] += 1
        if fault.kind == "midstream":
            out.write_chunk(protocol.stream_error(parsed, fault))
            await out.end_stream()
            return True
        if fault.kind == "cut":
            await out.flush()
            out.abort()
            return True
        if fault.kind == "malformed":
            out.write_chunk(protocol.malformed())
            await out.flush()
            return False
        if fault.kind == "stall":
            await out.flush()
            await asyncio.sleep(fault.arg if fault.arg is not None else 3600.0)
        return False


_STREAM_FAULTS = frozenset({"midstream", "cut", "malformed", "stall", "slow", "nousage", "tools"})


async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8790) -> None:
    sim = Simulator(config)
    server = HTTPServer(sim.handle, host, port)
    await server.start()
    print(f"llmq simulator listening on http://{host}:{server.port}", flush=True)
    await server.serve_forever()


class SimulatorThread:
    """Runs a simulator on its own event loop in a daemon thread (tests, benchmarks, the demo)."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = Simulator(config)
        self._server = HTTPServer(self.simulator.handle, host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="llmq-simulator", daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._server.start())
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_forever()

    def start(self) -> SimulatorThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._server.close(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(3)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(3)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def model_base(model: str) -> str:
    return split_model(model)[0]
