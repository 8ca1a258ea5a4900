"""The HTTP side of the simulator's batch APIs: which path is which call, errors in each API's shape.

OpenAI: ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``POST/GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.
Anthropic (``anthropic-version`` header required): ``POST/GET /v1/messages/batches``,
``GET/DELETE /v1/messages/batches/{id}``, ``GET /v1/messages/batches/{id}/results``,
``POST /v1/messages/batches/{id}/cancel``. The engine is :mod:`simulator.batches`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from simulator.batches import BatchEngine
from simulator.batchfiles import FileStore
from simulator.http import Request, Responder
from simulator.request import RequestError

__all__ = ["BatchRoutes", "is_batch_path"]

_OPENAI = re.compile(r"^/v1/(files|batches)(?:/([A-Za-z0-9_-]+))?(?:/(content|cancel))?$")
_ANTHROPIC = re.compile(r"^/v1/messages/batches(?:/([A-Za-z0-9_-]+))?(?:/(results|cancel))?$")


def is_batch_path(path: str) -> bool:
    return bool(_OPENAI.match(path) or _ANTHROPIC.match(path))


class BatchRoutes:
    def __init__(self, files: FileStore, engine: BatchEngine, delays: Callable[[], tuple[float, float]]) -> None:
        self.files = files
        self.engine = engine
        #: ``() -> (upload reply delay, batch-creation reply delay)``, seconds (crash tests).
        self._delays = delays

    async def handle(self, request: Request, out: Responder) -> None:
        anthropic = _ANTHROPIC.match(request.path)
        try:
            if anthropic:
                if not request.headers.get("anthropic-version"):
                    raise RequestError("anthropic-version: header is required")
                await self._anthropic(request, out, anthropic.group(1), anthropic.group(2))
            else:
                match = _OPENAI.match(request.path)
                assert match is not None  # the app routes only batch paths here
                await self._openai(request, out, match.group(1), match.group(2), match.group(3))
        except RequestError as exc:
            await _error(out, exc, anthropic=bool(anthropic))
        except (ValueError, TypeError, KeyError) as exc:
            await _error(out, RequestError(f"invalid request: {exc}"), anthropic=bool(anthropic))

    async def _openai(
        self, request: Request, out: Responder, kind: str, object_id: str | None, action: str | None
    ) -> None:
        method, files, engine = request.method, self.files, self.engine
        if kind == "files":
            if object_id is None and method == "POST":
                stored = files.upload(request.headers.get("content-type", ""), request.body)
                engine.stats["files"] += 1
                await _pause(self._delays()[0])
                await out.send_json(200, stored.as_json())
            elif object_id is None and method == "GET":
                await out.send_json(200, files.listing(request.query_params()))
            elif object_id is not None and action == "content" and method == "GET":
                engine.stats["file_downloads"] += 1
                await out.send(200, files.get(object_id).content, "application/octet-stream")
            elif object_id is not None and action is None and method == "GET":
                await out.send_json(200, files.get(object_id).as_json())
            elif object_id is not None and action is None and method == "DELETE":
                await out.send_json(200, files.delete(object_id))
            else:
                raise RequestError(f"{method} {request.path} is not a Files API call", status=405)
            return
        if object_id is None and method == "POST":
            batch = engine.create_openai(request.json())
            await _pause(self._delays()[1])
            await out.send_json(200, engine.openai_object(batch))
        elif object_id is None and method == "GET":
            await out.send_json(200, engine.listing("openai", request.query_params(), ""))
        elif object_id is not None and action is None and method == "GET":
            await out.send_json(200, engine.openai_object(engine.get(object_id, "openai")))
        elif object_id is not None and action == "cancel" and method == "POST":
            batch = engine.cancel(engine.get(object_id, "openai"))
            await out.send_json(200, engine.openai_object(batch))
        else:
            raise RequestError(f"{method} {request.path} is not a Batch API call", status=405)

    async def _anthropic(self, request: Request, out: Responder, batch_id: str | None, action: str | None) -> None:
        method, engine = request.method, self.engine
        base = f"http://{request.headers.get('host', '127.0.0.1')}"
        if batch_id is None and method == "POST":
            batch = engine.create_anthropic(request.json())
            await _pause(self._delays()[1])
            await out.send_json(200, engine.anthropic_object(batch, base))
        elif batch_id is None and method == "GET":
            await out.send_json(200, engine.listing("anthropic", request.query_params(), base))
        elif batch_id is not None and action is None and method == "GET":
            await out.send_json(200, engine.anthropic_object(engine.get(batch_id, "anthropic"), base))
        elif batch_id is not None and action == "results" and method == "GET":
            await out.send(200, engine.anthropic_results(engine.get(batch_id, "anthropic")), "application/x-jsonl")
        elif batch_id is not None and action == "cancel" and method == "POST":
            batch = engine.cancel(engine.get(batch_id, "anthropic"))
            await out.send_json(200, engine.anthropic_object(batch, base))
        elif batch_id is not None and action is None and method == "DELETE":
            await out.send_json(200, engine.delete_anthropic(engine.get(batch_id, "anthropic")))
        else:
            raise RequestError(f"{method} {request.path} is not a Message Batches call", status=405)


async def _pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def _error(out: Responder, exc: RequestError, *, anthropic: bool) -> None:
    kind = exc.kind
    if anthropic:
        if exc.status == 404:
            kind = "not_found_error"
        body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": exc.message}, "request_id": None}
    else:
        kind = "invalid_request_error" if kind == "not_found_error" else kind
        body = {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}
    await out.send_json(exc.status, body)
