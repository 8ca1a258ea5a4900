"""The tool registry: ``@tool`` on a typed function, or ``register_tool`` with a JSON Schema.

``@tool`` builds the arguments' JSON Schema from the function's signature with pydantic
(``Annotated``/``Field`` constraints included), takes the docstring as the description and
registers the function under its name. ``register_tool`` registers a handler with a schema you
write yourself; the schema is checked as a Draft 2020-12 JSON Schema when it is registered.

Handlers are plain (synchronous) functions called with the validated arguments as keyword
arguments. A handler that declares a parameter annotated :class:`CancelToken` gets one: it is
set when the call times out or the job is cancelled, so long handlers can stop at their next check.

Registering is what importing a tool module does (the worker imports the modules named in
``LLMQ_TOOLS`` / the routes file's ``[tools] modules``); this module itself has no side effects
beyond defining the process-wide :data:`REGISTRY`.
"""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, create_model
from pydantic.fields import FieldInfo

from workers.contract import Tool, ToolFunction, ToolInfo

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

__all__ = [
    "ISOLATIONS",
    "REGISTRY",
    "CancelToken",
    "Isolation",
    "ToolCancelledError",
    "ToolRegistry",
    "ToolSpec",
    "register_tool",
    "tool",
]

#: Where a call runs (``workers/tools/isolation.py``): None, the pool's own (an OS thread under
#: ``-P threads``, a greenlet under ``-P gevent``); ``"thread"`` an OS thread under either; ``"process"``
#: a child process, killed at the timeout (the one way to stop a handler that ignores its token).
Isolation = Literal["thread", "process"]
ISOLATIONS: tuple[Isolation, ...] = ("thread", "process")

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
F = TypeVar("F", bound=Callable[..., Any])


class ToolCancelledError(Exception):
    """Raised by :meth:`CancelToken.raise_if_cancelled` inside a handler."""


class CancelToken:
    """Set when a running call must stop (its timeout passed, or the job was cancelled)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()
            for callback in self._callbacks:
                callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the token is set (at once if it is): how the worker stops a call it
        runs in a child process."""
        self._callbacks.append(callback)
        if self._event.is_set():
            callback()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at once on cancel; True when cancelled."""
        return self._event.wait(seconds)

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise ToolCancelledError(self.reason)


@dataclass(frozen=True)
class ToolSpec:
    """One registered tool."""

    name: str
    description: str | None
    #: JSON Schema (Draft 2020-12) of the arguments object.
    parameters: dict[str, Any]
    handler: Callable[..., Any]
    #: None: the routes file's ``[tools] timeout_s`` (default 30 s).
    timeout_s: float | None = None
    #: Invalid calls of this tool a job may make; the next one fails it (None: config default 2).
    max_invalid: int | None = None
    #: Safe to run again when a worker died while it ran (else such a call fails the job).
    idempotent: bool = False
    #: Runs alone, never concurrently with the turn's other calls.
    sequential: bool = False
    #: The keyword the handler takes a :class:`CancelToken` under, if any.
    cancel_param: str | None = None
    #: For ``@tool`` functions: the pydantic model the arguments are converted with.
    model: type[BaseModel] | None = None
    #: Where a call runs: None (the pool's own), ``"thread"`` or ``"process"`` (see :data:`Isolation`).
    isolation: Isolation | None = None
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # jsonschema (~3 MB) is imported with the first tool: a worker without tools does not hold it
        from jsonschema import Draft202012Validator

        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    def definition(self) -> Tool:
        """The definition sent to the model."""
        return Tool(function=ToolFunction(name=self.name, description=self.description, parameters=self.parameters))

    def info(self, *, timeout_s: float, max_invalid: int) -> ToolInfo:
        return ToolInfo(
            name=self.name,
            description=self.description,
            parameters=self.parameters,
            timeout_s=timeout_s,
            max_invalid=max_invalid,
            idempotent=self.idempotent,
            sequential=self.sequential,
        )


class ToolRegistry:
    """Name -> :class:`ToolSpec`. Thread-safe."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}
        self._lock = threading.Lock()

    def add(self, spec: ToolSpec) -> ToolSpec:
        _check_name(spec.name)
        with self._lock:
            existing = self._tools.get(spec.name)
            if existing is not None and _origin(existing.handler) != _origin(spec.handler):
                raise ValueError(
                    f"a different tool named {spec.name!r} is already registered ({_origin(existing.handler)})"
                )
            self._tools[spec.name] = spec  # the same function again (a re-imported module) replaces it
        return spec

    def get(self, name: str) -> ToolSpec | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[ToolSpec]:
        return [self._tools[n] for n in self.names()]

    def remove(self, name: str) -> None:
        with self._lock:
            self._tools.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)


#: The process-wide registry ``@tool`` and ``register_tool`` add to by default.
REGISTRY = ToolRegistry()


def _origin(handler: Callable[..., Any]) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")


def _strip_titles(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema without the generated ``title``s (noise in every prompt)."""
    schema.pop("title", None)
    for prop in (schema.get("properties") or {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return schema


def _is_cancel(annotation: Any) -> bool:
    """``CancelToken``, or an optional one (``CancelToken | None``)."""
    if annotation is CancelToken:
        return True
    return CancelToken in typing.get_args(annotation)


def _signature_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], str | None]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    cancel_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args/**kwargs cannot be described as a schema")
        annotation = hints.get(param.name, Any)
        if _is_cancel(annotation):
            cancel_param = param.name
            continue
        if param.default is inspect.Parameter.empty:
            fields[param.name] = (annotation, ...)
        elif isinstance(param.default, FieldInfo):
            fields[param.name] = (annotation, param.default)
        else:
            fields[param.name] = (annotation, param.default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return model, cancel_param


def _cancel_param_of(handler: Callable[..., Any]) -> str | None:
    try:
        hints = typing.get_type_hints(handler)
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError, NameError):
        return None
    return next((p for p in params if _is_cancel(hints.get(p))), None)


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    max_invalid: int | None = None,
    idempotent: bool = False,
    sequential: bool = False,
    isolation: Isolation | None = None,
    registry: ToolRegistry | None = None,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    max_invalid: int | None = None,
    idempotent: bool = False,
    sequential: bool = False,
    isolation: Isolation | None = None,
    registry: ToolRegistry | None = None,
) -> F | Callable[[F], F]:
    """Register a typed function as a worker tool (``@tool`` or ``@tool(timeout_s=5, ...)``);
    ``isolation="thread"|"process"`` for a handler that may not return in time (:data:`Isolation`)."""

    def register(func: F) -> F:
        tool_name = name or func.__name__
        _check_name(tool_name)
        model, cancel_param = _signature_model(func, tool_name)
        parameters = _strip_titles(model.model_json_schema())
        _check_options(tool_name, timeout_s, max_invalid, isolation)
        (REGISTRY if registry is None else registry).add(
            ToolSpec(
                name=tool_name,
                description=inspect.getdoc(func) or None,
                parameters=parameters,
                handler=func,
                timeout_s=timeout_s,
                max_invalid=max_invalid,
                idempotent=idempotent,
                sequential=sequential,
                cancel_param=cancel_param,
                model=model,
                isolation=isolation,
            )
        )
        return func

    return register(fn) if fn is not None else register


def register_tool(
    name: str,
    description: str | None,
    parameters: Mapping[str, Any],
    handler: Callable[..., Any],
    *,
    timeout_s: float | None = None,
    max_invalid: int | None = None,
    idempotent: bool = False,
    sequential: bool = False,
    isolation: Isolation | None = None,
    registry: ToolRegistry | None = None,
) -> ToolSpec:
    """Register ``handler`` under ``name`` with a JSON Schema (Draft 2020-12) of its arguments.

    The handler is called with the validated arguments as keyword arguments (and a
    :class:`CancelToken` under the parameter annotated with it, if any).
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    _check_name(name)
    schema = dict(parameters)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"tool {name!r}: parameters are not a valid JSON Schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise ValueError(f'tool {name!r}: parameters must describe an object ("type": "object")')
    _check_options(name, timeout_s, max_invalid, isolation)
    return (REGISTRY if registry is None else registry).add(
        ToolSpec(
            name=name,
            description=description,
            parameters=schema,
            handler=handler,
            timeout_s=timeout_s,
            max_invalid=max_invalid,
            idempotent=idempotent,
            sequential=sequential,
            cancel_param=_cancel_param_of(handler),
            isolation=isolation,
        )
    )


def _check_options(name: str, timeout_s: float | None, max_invalid: int | None, isolation: object) -> None:
    if isolation is not None and isolation not in ISOLATIONS:
        raise ValueError(f"tool {name!r}: isolation must be 'thread' or 'process' (or None: the pool's own)")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"tool {name!r}: timeout_s must be > 0")
    if max_invalid is not None and max_invalid < 1:
        raise ValueError(f"tool {name!r}: max_invalid must be >= 1")
