"""The provider simulator: an OpenAI/Anthropic/Ollama/Azure/Gemini/Bedrock-compatible server with scripted faults.

It answers any model name with deterministic text, paced by ``latency`` (time to first token)
and ``tokens_per_s``, and counts every request it serves so tests can assert "exactly one
upstream request". Control endpoints:

* ``GET /_sim/stats`` - counters (requests, by_path, by_model, by_job, by_outcome, by_fault,
  open_streams, closed_early); ``POST /_sim/reset`` clears them and the fault sequences;
* ``GET /_sim/streams?job=ID`` - the recent streams (of one job): path, model, started, ended,
  outcome; ``GET /_sim/requests?job=ID`` - the same for every answered request;
* ``GET /_sim/config`` / ``POST /_sim/config`` - read or change pacing and fault rates live.

The provider batch APIs (OpenAI Files + Batch, Anthropic Message Batches) are served too, answering
each line as the live endpoint would (``simulator/batches.py``); their counters are ``batches`` in
the stats.

Per-request overrides (headers): ``x-llmq-sim-fault`` (fault plan), ``x-llmq-sim-tokens``
(answer length), ``x-llmq-sim-latency`` (seconds to the first token), ``x-llmq-sim-tokens-per-s``.
Sequences are keyed by the ``x-llmq-job-id`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from itertools import cycle, islice

from simulator.answer import Answer, send_error, send_once, send_stream
from simulator.batches import BatchEngine, LineAnswer
from simulator.batchfiles import FileStore
from simulator.batchroutes import BatchRoutes, is_batch_path
from simulator.env import provider_config, provider_env, worker_env
from simulator.http import HTTPServer, Request, Responder
from simulator.pacer import Pacer
from simulator.promptcache import PromptCache
from simulator.protocols.base import ParsedRequest, Protocol, RequestError
from simulator.protocols.openai import OpenAIProtocol
from simulator.script import (
    Fault,
    FaultPlanner,
    Script,
    ToolCall,
    bad_tool_arguments,
    parse_rates,
    quote_tool_results,
    tool_arguments,
    words_for,
)
from simulator.stats import Stats
from simulator.structured import plan_params
from workers.contract.providers import SIMULATOR_URL_ENV

__all__ = ["SimConfig", "Simulator", "SimulatorThread", "default_protocols", "serve"]


def default_protocols() -> list[Protocol]:
    protocols: list[Protocol] = [OpenAIProtocol()]
    try:  # the other wire formats are optional modules of the simulator
        from simulator.protocols.anthropic import AnthropicProtocol
        from simulator.protocols.azure import AzureProtocol
        from simulator.protocols.bedrock import BedrockProtocol
        from simulator.protocols.gemini import GeminiProtocol
        from simulator.protocols.ollama import OllamaProtocol
    except ImportError:
        return protocols
    return [*protocols, AnthropicProtocol(), OllamaProtocol(), AzureProtocol(), GeminiProtocol(), BedrockProtocol()]


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
    #: Provider batches: seconds from creation until every line is answered (spread evenly).
    batch_processing_s: float = 0.0
    #: Provider batches: the completion window; lines not answered within it expire.
    batch_window_s: float = 86_400.0
    #: Provider batches: seconds an upload's / a batch creation's reply is held after the object
    #: exists (a client killed meanwhile leaves an object it never learned of).
    batch_upload_delay_s: float = 0.0
    batch_create_delay_s: float = 0.0


def _header_number(headers: dict[str, str], name: str, integer: bool = False) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise RequestError(f"{name}: not a number: {raw!r}") from None
    if value < 0 or not math.isfinite(value):
        raise RequestError(f"{name}: must be >= 0")
    return value


class Simulator:
    def __init__(self, config: SimConfig | None = None, protocols: list[Protocol] | None = None) -> None:
        self.config = config or SimConfig()
        parse_rates(self.config.fault_rates)  # fail early on unknown fault items
        self.protocols = {p.path: p for p in (protocols or default_protocols())}
        #: Protocols whose paths name the model (tried in turn when no fixed path matched).
        self.routed = [p for p in self.protocols.values() if type(p).route is not Protocol.route]
        self.planner = FaultPlanner(rates=dict(self.config.fault_rates), seed=self.config.seed)
        self.stats = Stats()
        self.pacer = Pacer()
        #: What the providers' prompt caches hold (Anthropic's breakpoints, OpenAI's automatic prefixes).
        self.prompt_cache = PromptCache()
        self.batches = self._batch_routes()

    def _batch_routes(self) -> BatchRoutes:
        files = FileStore()
        engine = BatchEngine(
            files,
            self.answer_line,
            config=lambda: (self.config.batch_processing_s, self.config.batch_window_s),
            seed=self.config.seed,
        )
        return BatchRoutes(files, engine, lambda: (self.config.batch_upload_delay_s, self.config.batch_create_delay_s))

    async def handle(self, request: Request, out: Responder) -> None:
        if is_batch_path(request.path):
            await self.batches.handle(request, out)
            return
        protocol = self.protocols.get(request.path)
        route: dict[str, str] | None = None
        if protocol is None:
            for candidate in self.routed:
                route = candidate.route(request.path)
                if route is not None:
                    protocol = candidate
                    break
        if protocol is None:
            await self._control(request, out)
        elif request.method != "POST":
            await out.send_json(405, {"error": {"message": "use POST", "type": "invalid_request_error"}})
        else:
            await self._serve(protocol, request, out, route)

    async def _control(self, request: Request, out: Responder) -> None:
        path, method = request.path, request.method
        if path == "/_sim/stats":
            await out.send_json(200, {**self.stats.as_json(), "batches": self.batches.engine.as_json()})
        elif path == "/_sim/reset" and method == "POST":
            self.stats = Stats()
            self.planner.reset()
            self.prompt_cache.clear()
            self.batches = self._batch_routes()
            await out.send_json(200, {"ok": True})
        elif path in ("/_sim/streams", "/_sim/requests"):
            job = request.query_params().get("job")
            await out.send_json(200, self.stats.records(job, streams_only=path == "/_sim/streams"))
        elif path == "/_sim/config":
            if method == "POST":
                try:
                    self._update_config(request.json())
                except (ValueError, TypeError) as exc:
                    await out.send_json(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                    return
            await out.send_json(200, asdict(self.config))
        elif path in ("/", "/health", "/healthz", "/_sim/health"):
            await out.send_json(200, {"ok": True, "paths": sorted(self.protocols)})
        else:
            await out.send_json(
                404, {"error": {"message": _no_route(path, sorted(self.protocols)), "type": "not_found"}}
            )

    def _update_config(self, changes: object) -> None:
        if not isinstance(changes, dict):
            raise ValueError("config must be a JSON object")
        current = asdict(self.config)
        unknown = set(changes) - set(current)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        rates = changes.get("fault_rates", self.config.fault_rates)
        if not isinstance(rates, dict):
            raise ValueError("fault_rates must be an object")
        parse_rates(rates)
        new = SimConfig(**{**current, **changes, "fault_rates": dict(rates)})
        if new.latency < 0 or new.tokens_per_s < 0 or new.completion_tokens < 0:
            raise ValueError("latency, tokens_per_s and completion_tokens must be >= 0")
        timings = (new.batch_processing_s, new.batch_window_s, new.batch_upload_delay_s, new.batch_create_delay_s)
        if any(not isinstance(t, int | float) or t < 0 for t in timings):
            raise ValueError("the batch_* settings must be numbers >= 0")
        self.config = new
        self.planner.rates = dict(new.fault_rates)
        if "seed" in changes:
            self.planner.seed = new.seed
            self.planner.reset()

    async def _serve(
        self, protocol: Protocol, request: Request, out: Responder, route: dict[str, str] | None = None
    ) -> None:
        headers = request.headers
        job = headers.get("x-llmq-job-id", "")
        stats = self.stats
        stats.count_request(protocol.path if route is not None else request.path, job)
        try:
            protocol.check(headers)
            payload = request.json()
            if not isinstance(payload, dict):
                raise RequestError("body must be a JSON object")
            if route is None:
                req = protocol.parse(payload)
            else:
                req = protocol.parse_routed(payload, route, request.query_params())
            req.protocol_name = protocol.name
            tokens = _header_number(headers, "x-llmq-sim-tokens", integer=True)
            latency = _header_number(headers, "x-llmq-sim-latency")
            tps = _header_number(headers, "x-llmq-sim-tokens-per-s")
            fault = self.planner.choose(req.model, headers.get("x-llmq-sim-fault"), job, request.path)
        except RequestError as exc:
            await self._invalid(protocol, exc, out)
            return
        except (ValueError, TypeError, KeyError) as exc:  # bad JSON, bad fault plan
            await self._invalid(protocol, RequestError(f"invalid request: {exc}"), out)
            return
        stats.by_model[req.model] += 1
        if fault.is_http_error:
            record = stats.begin(
                request.path, req.model, job, False, str(fault), prompt=req.prompt_text, messages=req.message_count
            )
            stats.finish(record, f"error_{fault.kind}")
            await send_error(protocol, fault, req, out)
            return
        config = self.config
        tps = config.tokens_per_s if tps is None else tps
        answer = Answer(
            protocol=protocol,
            req=req,
            script=self._script(protocol, req, fault, config.completion_tokens if tokens is None else int(tokens)),
            fault=fault,
            latency=(config.latency if latency is None else latency)
            + ((fault.arg or 0.0) if fault.kind == "slow" else 0),
            gap=1.0 / tps if tps > 0 else 0.0,
            pacer=self.pacer,
        )
        record = stats.begin(
            request.path, req.model, job, req.stream, str(fault), prompt=req.prompt_text, messages=req.message_count
        )
        try:
            outcome = await (send_stream if req.stream else send_once)(answer, out)
        except (asyncio.CancelledError, ConnectionError):
            stats.finish(record, "closed_early")
            raise
        except BaseException:
            stats.finish(record, "simulator_error")
            raise
        stats.finish(record, outcome)

    async def _invalid(self, protocol: Protocol, err: RequestError, out: Responder) -> None:
        self.stats.by_outcome["invalid"] += 1
        status, headers, body = protocol.invalid(err)
        await out.send(status, body, protocol.content_type, headers)

    def answer_line(self, api: str, payload: dict[str, object], key: str) -> LineAnswer:
        """One line of a provider batch, answered as the live endpoint would answer its body
        (``api``: ``openai`` or ``anthropic``; ``key`` keys the line's fault sequence)."""
        protocol = self.protocols["/v1/messages" if api == "anthropic" else "/v1/chat/completions"]
        try:
            req = protocol.parse(payload)
            req.protocol_name = protocol.name
            fault = self.planner.choose(req.model, None, key, f"batch:{protocol.path}")
        except RequestError as exc:
            status, _, body = protocol.invalid(exc)
            return LineAnswer(status, body)
        except (ValueError, TypeError, KeyError) as exc:
            status, _, body = protocol.invalid(RequestError(f"invalid request: {exc}"))
            return LineAnswer(status, body)
        if fault.kind == "expire":
            return LineAnswer(0, b"")
        if fault.is_http_error or fault.kind == "midstream":
            status, _, body = protocol.error(fault if fault.is_http_error else protocol.midstream_fault, req)
            return LineAnswer(status, body)
        script = self._script(protocol, req, fault, self.config.completion_tokens)
        return LineAnswer(200, protocol.complete_body(req, script, fault.kind != "nousage"))

    def _script(self, protocol: Protocol, req: ParsedRequest, fault: Fault, wanted: int) -> Script:
        limit = req.max_tokens
        count = wanted if limit is None else min(wanted, limit)
        script = Script(tokens=words_for(req.prompt_text, count), prompt_tokens=protocol.prompt_tokens(req))
        if limit is not None and wanted > limit:
            script.finish = "length"
        self._prompt_cache(protocol, req, script)
        if fault.kind in ("tools", "badargs") and req.tools:
            n = max(1, int(fault.arg or 1))
            script.tool_calls = [
                ToolCall(
                    t.name,
                    bad_tool_arguments(t.schema)
                    if fault.kind == "badargs"
                    else tool_arguments(t.schema, req.prompt_text),
                )
                for t in islice(cycle(req.tools), n)
            ]
            script.tokens = ()
            script.finish = "tool"
        elif req.tool_results:
            quoted = quote_tool_results(req.tool_results)
            script.tokens = quoted if limit is None else quoted[:limit]
            script.finish = "length" if limit is not None and len(quoted) > limit else "stop"
        if fault.kind == "cache":  # the faults say what was read or written, whatever the rules say
            script.cached_tokens = min(int(fault.arg or 0), script.prompt_tokens)
            script.cache_write_tokens = script.cache_write_1h_tokens = 0
        elif fault.kind == "cachew":
            script.cache_write_tokens = min(int(fault.arg or 0), script.prompt_tokens)
            script.cached_tokens = script.cache_write_1h_tokens = 0
        return plan_params(script, req, fault)

    def _prompt_cache(self, protocol: Protocol, req: ParsedRequest, script: Script) -> None:
        """Reads and writes of the provider's prompt cache, by its rules (``simulator/promptcache.py``)."""
        if not req.cache_blocks:
            return
        model = req.base_model
        if protocol.name in ("anthropic", "bedrock"):  # Claude on Bedrock caches by Anthropic's rules
            use = self.prompt_cache.anthropic(model, req.cache_blocks, 2048 if "haiku" in model else 1024)
        elif protocol.name == "openai":
            use = self.prompt_cache.openai(model, req.cache_blocks)
        else:
            return
        total = script.prompt_tokens
        script.cached_tokens = min(use.read, total)
        script.cache_write_tokens = min(use.write_5m + use.write_1h, total - script.cached_tokens)
        script.cache_write_1h_tokens = min(use.write_1h, script.cache_write_tokens)


async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8790) -> None:
    """Run a simulator until SIGTERM/SIGINT (the ``llmq simulate`` command)."""
    sim = Simulator(config)
    server = HTTPServer(sim.handle, host, port)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(worker_instructions(host, server.port), flush=True)
    await stop.wait()
    await server.close()


def _no_route(path: str, served: list[str]) -> str:
    """The 404 message: for OpenAI's paths without their ``/v1``, what the base URL lacks."""
    if "/v1" + path in served or path.startswith(("/chat/", "/batches", "/files")):
        return f"no route {path}: OpenAI's paths are under /v1 (a worker needs OPENAI_BASE_URL=<simulator>/v1)"
    return f"no route {path} (this simulator serves {', '.join(served)})"


def worker_instructions(host: str, port: int) -> str:
    """What ``llmq simulate`` prints at start: where it listens, and the variables a worker needs to use it."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}"
    exports = "\n".join(f"  export {name}={value}" for name, value in worker_env(url).items())
    entries = "\n".join(f"  {line}" if line else "" for line in provider_config(url).splitlines())
    keys = " ".join(f"{k}={v}" for k, v in provider_env(url).items() if k not in worker_env(url))
    return (
        f"llmq simulator listening on http://{host}:{port}\n"
        f"A worker uses it with these in its environment (OpenAI's base URL ends in /v1):\n{exports}\n"
        f"  # or, for every provider without a key or base URL of its own: export {SIMULATOR_URL_ENV}={url}\n"
        "Azure OpenAI, Gemini and Bedrock are entries of the worker's config file (LLMQ_CONFIG):\n"
        f"{entries}\n"
        f"with their keys in its environment (any values; the simulator checks that one is sent):\n  export {keys}"
    )


class SimulatorThread:
    """Runs a simulator on its own event loop in a daemon thread (tests, benchmarks, the demo)."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = Simulator(config)
        self._server = HTTPServer(self.simulator.handle, host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="llmq-simulator", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._server.start())
        except BaseException as exc:  # e.g. the port is taken: report it to start()
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def start(self) -> SimulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulator did not start")
        if self._error is not None:
            raise self._error
        return self

    async def _shutdown(self) -> None:
        await self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
