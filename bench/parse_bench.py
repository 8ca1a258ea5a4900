#!/usr/bin/env python3
"""CPU cost of reading a long stream: our providers vs the official SDKs vs a json.loads floor.

    .venv/bin/python bench/parse_bench.py [--chunks 10000] [--runs 5] [--delivery event,bulk]

Method: for each provider one recorded transcript
from ``../shared/conformance/transcripts`` (or ``--conformance`` / ``LLMQ_CONFORMANCE_DIR``) is made
long and still valid by keeping its head and tail events byte for byte and repeating the block of
middle events (text deltas and the pings among them) to about ``--chunks`` events. The same bytes
are then delivered by in-memory transports, one chunk per event (``event``, a live stream) or in
64 KiB slices (``bulk``, a burst), to:

  sdk    the official client's streaming call (openai, anthropic: httpx2; ollama: httpx)
  ours   our provider's ``stream()`` through our ``HTTPClient`` (httpx2 MockTransport)
  floor  a minimal parser (split lines, ``json.loads`` each payload, pick text and the stop
         reason) over the same httpx2 MockTransport, reading ``iter_raw()`` as ours does
  floor-str  the same, but decoding each line to ``str`` before the JSON decoder, as ours does
         (``json.loads`` on ``bytes`` sniffs the encoding in Python: a quarter of its cost)
  ours-raw / floor-raw  the two parsers fed the chunks directly, with no HTTP library

CPU time is ``time.process_time()`` around one request plus full consumption (GC on, collected
before each run). Every path is warmed up on a one-repetition stream, then the paths are run in
rounds, each round running every path once, the compared ones back to back in alternating order,
so that load from other processes falls on them alike; the SDK path (slow) runs in the first ``--sdk-runs`` rounds only. We
report each path's median, and each ratio as the median of the per-round ratios (a paired
comparison: on a shared machine the load changes between rounds, by 2x here, but hardly within
one). Every run's text and stop reason are checked against the sidecar. A chunk is one event the
consumer sees (OpenAI: ``data:`` events without ``[DONE]``; Anthropic: SSE events incl. ``ping``;
Ollama: NDJSON lines).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.contract import Message, RequestParams
from workers.llm.anthropic import AnthropicProvider, AnthropicStream
from workers.llm.base import ChatRequest, ResponseStream
from workers.llm.httpclient import HTTPClient, HTTPSettings
from workers.llm.ollama import OllamaProvider, OllamaStream
from workers.llm.openai import OpenAIProvider, OpenAIStream

TRANSCRIPTS = {
    "openai": "oa_stream_text_usage_02",
    "anthropic": "an_stream_text_ping_03",
    "ollama": "ol_stream_text_01",
}
CTYPE = {"openai": "text/event-stream", "anthropic": "text/event-stream", "ollama": "application/x-ndjson"}
MODEL = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-20250514", "ollama": "gemma3:1b"}
REASON_KEY = {"openai": "finish_reason", "anthropic": "stop_reason", "ollama": "done_reason"}
Run = Callable[[], tuple[str, str | None]]


@dataclass
class Synth:
    provider: str
    events: list[bytes]
    body: bytes
    n_chunks: int
    reps: int
    text: str
    reason: str | None


def _split(provider: str, raw: bytes) -> list[bytes]:
    """Cut a body into events, each with its terminator; lossless."""
    sep = b"\n" if provider == "ollama" else b"\n\n"
    parts = raw.split(sep)
    events = [p + sep for p in parts[:-1]]
    if parts[-1]:
        events.append(parts[-1])
    return events


def _payload(provider: str, event: bytes) -> dict | None:
    if provider == "ollama":
        return json.loads(event) if event.strip() else None
    for line in event.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            return json.loads(line[5:])
    return None


def _text(provider: str, payload: dict | None) -> str:
    if payload is None:
        return ""
    if provider == "openai":
        return "".join(c["delta"].get("content") or "" for c in payload.get("choices", []))
    if provider == "anthropic":
        delta = payload.get("delta") or {}
        return delta.get("text") or "" if delta.get("type") == "text_delta" else ""
    return "" if payload.get("done") else payload["message"].get("content") or ""


def synthesize(conformance: Path, provider: str, name: str, target: int) -> Synth:
    folder = conformance / "transcripts" / provider
    expected = json.loads((folder / f"{name}.expected.json").read_text(encoding="utf-8"))["expected"]
    raw = next(folder.glob(f"{name}.body.*")).read_bytes()
    events = _split(provider, raw)
    assert b"".join(events) == raw
    texts = [_text(provider, _payload(provider, e)) for e in events]
    with_text = [i for i, t in enumerate(texts) if t]
    first, last = with_text[0], with_text[-1]
    head, middle, tail = events[:first], events[first : last + 1], events[last + 1 :]
    assert "".join(texts) == (expected["text"] or "")
    reps = max(1, round((target - len(head) - len(tail)) / len(middle)))
    synthetic = head + middle * reps + tail
    counted = sum(1 for e in synthetic if _payload(provider, e) is not None)
    text, reason = (expected["text"] or "") * reps, expected[REASON_KEY[provider]]
    return Synth(provider, synthetic, b"".join(synthetic), counted, reps, text, reason)


def deliveries(s: Synth, mode: str, bulk: int) -> list[bytes]:
    return list(s.events) if mode == "event" else [s.body[i : i + bulk] for i in range(0, len(s.body), bulk)]


# --- the floor: one json.loads per line, nothing else ------------------------------------------


def floor_parse(provider: str, chunks: Iterable[bytes], as_str: bool = False) -> tuple[str, str | None]:
    loads, decode = json.loads, json.JSONDecoder().decode
    buf = b""
    out: list[str] = []
    reason = None
    for chunk in chunks:
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if provider == "ollama":
                if not line:
                    continue
                obj = decode(line.decode()) if as_str else loads(line)
                if obj["message"]["content"]:
                    out.append(obj["message"]["content"])
                if obj.get("done"):
                    return "".join(out), obj.get("done_reason")
                continue
            if not line.startswith(b"data:"):
                continue
            if provider == "openai":
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return "".join(out), reason
                for choice in (decode(payload.decode()) if as_str else loads(payload))["choices"]:
                    if choice["delta"].get("content"):
                        out.append(choice["delta"]["content"])
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
            else:
                obj = decode(line[5:].decode()) if as_str else loads(line[5:])
                kind = obj["type"]
                if kind == "content_block_delta" and obj["delta"]["type"] == "text_delta":
                    out.append(obj["delta"]["text"])
                elif kind == "message_delta":
                    reason = obj["delta"].get("stop_reason")
                elif kind == "message_stop":
                    return "".join(out), reason
    return "".join(out), reason


# --- paths -----------------------------------------------------------------------------------------


def _mock(mod, chunks: list[bytes], ctype: str):
    return mod.MockTransport(lambda request: mod.Response(200, headers={"content-type": ctype}, content=iter(chunks)))


def path_ours(s: Synth, chunks: list[bytes]) -> Run:
    http = HTTPClient(HTTPSettings(), transport=_mock(httpx2, chunks, CTYPE[s.provider]))
    origin = "http://127.0.0.1:9"
    provider = {
        "openai": lambda: OpenAIProvider(http, api_key="sk-bench", base_url=f"{origin}/v1"),
        "anthropic": lambda: AnthropicProvider(http, api_key="sk-bench", base_url=origin),
        "ollama": lambda: OllamaProvider(http, host=origin),
    }[s.provider]()
    request = ChatRequest(messages=[Message(role="user", content="hi")], params=RequestParams(max_tokens=1024))

    def run() -> tuple[str, str | None]:
        stream = provider.stream(MODEL[s.provider], request)
        for _ in stream:
            pass
        return stream.text, stream.native_finish_reason

    return run


class _Body:
    headers: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def iter_bytes(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        pass


def path_ours_raw(s: Synth, chunks: list[bytes]) -> Run:
    cls: type[ResponseStream] = {"openai": OpenAIStream, "anthropic": AnthropicStream, "ollama": OllamaStream}[
        s.provider
    ]

    def run() -> tuple[str, str | None]:
        stream = cls(_Body(chunks), provider=s.provider, model="m")  # type: ignore[call-arg]
        for _ in stream:
            pass
        return stream.text, stream.native_finish_reason

    return run


def path_floor(s: Synth, chunks: list[bytes], as_str: bool = False) -> Run:
    client = httpx2.Client(transport=_mock(httpx2, chunks, CTYPE[s.provider]))
    body = json.dumps({"model": MODEL[s.provider], "stream": True}).encode()

    def run() -> tuple[str, str | None]:
        with client.stream("POST", "http://127.0.0.1:9/x", content=body) as response:
            return floor_parse(s.provider, response.iter_raw(), as_str)

    return run


def path_floor_raw(s: Synth, chunks: list[bytes]) -> Run:
    return lambda: floor_parse(s.provider, iter(chunks))


def path_sdk(s: Synth, chunks: list[bytes]) -> Run:
    """The official client's streaming call, consumed the way its README shows."""
    messages = [{"role": "user", "content": "hi"}]
    if s.provider == "ollama":
        import ollama

        ol = ollama.Client(host="http://127.0.0.1:9", transport=_mock(httpx, chunks, CTYPE["ollama"]))

        def run_ollama() -> tuple[str, str | None]:
            out, reason = [], None
            for part in ol.chat(model=MODEL["ollama"], messages=messages, stream=True):
                out.append(part.message.content or "")
                reason = part.done_reason if part.done else reason
            return "".join(out), reason

        return run_ollama
    import anthropic
    import openai

    http = httpx2.Client(transport=_mock(httpx2, chunks, CTYPE[s.provider]))
    if s.provider == "anthropic":
        an = anthropic.Anthropic(api_key="sk-bench", base_url="http://127.0.0.1:9", max_retries=0, http_client=http)

        def run_anthropic() -> tuple[str, str | None]:
            out, reason = [], None
            for event in an.messages.create(model=MODEL["anthropic"], max_tokens=1024, messages=messages, stream=True):
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    out.append(event.delta.text)
                elif event.type == "message_delta":
                    reason = event.delta.stop_reason
            return "".join(out), reason

        return run_anthropic
    oa = openai.OpenAI(api_key="sk-bench", base_url="http://127.0.0.1:9/v1", max_retries=0, http_client=http)

    def run_openai() -> tuple[str, str | None]:
        out, reason = [], None
        options = {"include_usage": True}
        for chunk in oa.chat.completions.create(model="gpt-4o", messages=messages, stream=True, stream_options=options):
            for choice in chunk.choices:
                out.append(choice.delta.content or "")
                reason = choice.finish_reason or reason
        return "".join(out), reason

    return run_openai


PATHS: dict[str, Callable[[Synth, list[bytes]], Run]] = {
    "sdk": path_sdk,
    "ours": path_ours,
    "floor": path_floor,
    "floor-str": lambda s, chunks: path_floor(s, chunks, as_str=True),
    "ours-raw": path_ours_raw,
    "floor-raw": path_floor_raw,
}


def _check(s: Synth, result: tuple[str, str | None]) -> None:
    text, reason = result
    assert text == s.text, f"{s.provider}: text mismatch ({len(text)} vs {len(s.text)} chars)"
    assert reason == s.reason, f"{s.provider}: reason {reason!r} != {s.reason!r}"


def measure(s: Synth, small: Synth, mode: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """CPU seconds of every run of every path, interleaved round by round."""
    chunks, small_chunks = deliveries(s, mode, args.bulk_size), deliveries(small, mode, args.bulk_size)
    runs: dict[str, Run] = {}
    for name, factory in PATHS.items():
        _check(small, factory(small, small_chunks)())  # warm-up: imports, lazy SDK setup, caches
        runs[name] = factory(s, chunks)
    gc.collect()
    gc.freeze()  # what the SDKs imported stays out of every collection (each would cost ~0.2 s)
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for round_no in range(args.runs):
        # compared paths run back to back, alternating AB / BA, so drifting load cancels out
        names = ["sdk"] if round_no < args.sdk_runs else []
        for group in (("ours", "floor", "floor-str"), ("ours-raw", "floor-raw")):
            names += group if round_no % 2 == 0 else group[::-1]
        for name in names:
            gc.collect()
            start = time.process_time()
            result = runs[name]()
            cpu[name].append(time.process_time() - start)
            _check(s, result)
    gc.unfreeze()
    return cpu


def _paired(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios ``a[i] / b[i]`` (rounds where both ran)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=False))


def versions() -> str:
    found = ", ".join(f"{pkg} {metadata.version(pkg)}" for pkg in ("openai", "anthropic", "ollama", "httpx", "httpx2"))
    return f"Python {platform.python_version()} ({platform.machine()}); {found}"


def main(argv: list[str] | None = None) -> int:
    default_dir = (
        os.environ.get("LLMQ_CONFORMANCE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "conformance"
    )
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conformance", type=Path, default=Path(default_dir))
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sdk-runs", type=int, default=3, help="rounds that also time the (slow) SDK path")
    ap.add_argument("--delivery", default="event,bulk")
    ap.add_argument("--bulk-size", type=int, default=65536)
    ap.add_argument("--providers", default="openai,anthropic,ollama")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if not (args.conformance / "transcripts").is_dir():
        ap.error(f"no transcripts under {args.conformance} (use --conformance or LLMQ_CONFORMANCE_DIR)")

    print(versions())
    head = f"{'provider':9} {'delivery':8} {'chunks':>6} | {'sdk':>7} {'ours':>6} {'floor':>6} | "
    head += f"{'ours/floor':>10} {'sdk/ours':>8} {'ours/floor-str':>14} | {'ours-raw':>8} {'floor-raw':>9} {'ratio':>6}"
    print(f"µs of CPU per chunk, median of {args.runs} runs (sdk: {args.sdk_runs}); ratios: median of per-round ratios")
    print(head + "\n" + "-" * len(head))
    rows = []
    for provider in args.providers.split(","):
        s = synthesize(args.conformance, provider, TRANSCRIPTS[provider], args.chunks)
        small = synthesize(args.conformance, provider, TRANSCRIPTS[provider], 1)
        for mode in args.delivery.split(","):
            cpu = measure(s, small, mode, args)
            us = {name: statistics.median(v) / s.n_chunks * 1e6 for name, v in cpu.items()}
            ratios = {
                "ours/floor": _paired(cpu["ours"], cpu["floor"]),
                "ours/floor-str": _paired(cpu["ours"], cpu["floor-str"]),
                "sdk/ours": _paired(cpu["sdk"], cpu["ours"]),
                "ours-raw/floor-raw": _paired(cpu["ours-raw"], cpu["floor-raw"]),
            }
            row: dict[str, object] = {"provider": provider, "delivery": mode, "chunks": s.n_chunks, "reps": s.reps}
            row |= {f"{name}_us": round(v, 3) for name, v in us.items()}
            row |= {k: round(v, 3) for k, v in ratios.items()}
            rows.append(row)
            print(
                f"{provider:9} {mode:8} {s.n_chunks:>6} | {us['sdk']:7.2f} {us['ours']:6.2f} {us['floor']:6.2f} | "
                f"{ratios['ours/floor']:9.2f}x {ratios['sdk/ours']:7.1f}x {ratios['ours/floor-str']:13.2f}x | "
                f"{us['ours-raw']:8.2f} {us['floor-raw']:9.2f} {ratios['ours-raw/floor-raw']:5.2f}x",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"versions": versions(), "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
