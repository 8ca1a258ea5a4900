"""The Jinja2 sandbox prompts render in: immutable, strict, and bounded in size and iterations.

:class:`PromptSandbox` is an ``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` (a missing
variable is an error, never an empty string) and these limits on top of Jinja's own sandbox:

- no format specs anywhere: ``str.format``/``format_map`` and the ``format`` filter are gone, and
  ``%`` on strings is refused (``{x:>300000000}`` and ``"%300000000s"`` are padding attacks);
- only non-growing ``str`` methods (``lower``, ``strip``, ``split`` ...), no ``ljust``/``center``/
  ``zfill``; the ``attr``, ``random`` filters and the ``lipsum`` global are removed;
- every value an operator builds (``*``, ``+``, ``**``, ``~``, ``replace``, ``join``) is checked
  *before* it is built against the render cap, so no single expression allocates past it;
- ``range`` draws on a per-render iteration budget, so nested loops cannot spin forever;
- the output is produced chunk by chunk and counted: past the cap the render stops.

Templates are compiled once per content hash (:meth:`PromptSandbox.template`).
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workers.prompts.limits import DEFAULT_MAX_CHARS, SandboxError

__all__ = ["DEFAULT_MAX_CHARS", "MAX_ITERATIONS", "PromptSandbox", "RenderLimitError", "SandboxError"]

#: ``range`` items one render may iterate over in total (all loops together).
MAX_ITERATIONS = 100_000
_MAX_EXPONENT = 1_000
_MAX_WIDTH = 200
#: ``str`` methods a template may call: none of them can make a string longer than its input.
_SAFE_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isdigit",
        "islower", "isnumeric", "isspace", "istitle", "isupper", "lower", "lstrip", "partition",
        "removeprefix", "removesuffix", "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split",
        "splitlines", "startswith", "strip", "swapcase", "title", "upper",
    }
)  # fmt: skip
_REMOVED_FILTERS = ("attr", "format", "random", "center", "xmlattr", "urlize")


class RenderLimitError(SandboxError):
    """A render went past its size or iteration cap."""


@dataclass
class _Budget:
    max_chars: int
    iterations: int = MAX_ITERATIONS


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("llmq_prompt_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # compiled but rendered outside PromptSandbox.render: the strictest limits
        return _Budget(max_chars=DEFAULT_MAX_CHARS)
    return budget


def _check_size(size: int, what: str) -> None:
    cap = _budget().max_chars
    if size > cap:
        raise RenderLimitError(f"{what} would be {size:,} characters, over the prompt cap of {cap:,}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


class _CappedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` into a size-checked join instead of Jinja's unchecked ``str_join``."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.capped_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _range(*args: int) -> range:
    values = range(*args)
    budget = _budget()
    budget.iterations -= len(values)
    if budget.iterations < 0:
        raise RenderLimitError(f"loops over range() went past {MAX_ITERATIONS:,} iterations in one render")
    return values


def _replace(value: Any, old: str, new: str, count: int | None = None) -> str:
    text, old, new = str(value), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _check_size(len(text) + hits * max(0, len(new) - len(old)), "replace()")
    return text.replace(old, new, -1 if count is None else count)


def _join(value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = [str(v[attribute] if attribute is not None else v) for v in value]
    _check_size(sum(map(len, items)) + len(d) * max(0, len(items) - 1), "join()")
    return str(d).join(items)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if (len(width) if isinstance(width, str) else int(width)) > _MAX_WIDTH:
        raise SandboxError(f"indent() width over {_MAX_WIDTH} characters")
    pad = width if isinstance(width, str) else " " * int(width)
    lines = str(s).split("\n")
    _check_size(len(str(s)) + len(pad) * len(lines), "indent()")
    out = [(pad + line) if (blank or line.strip()) else line for line in lines]
    if not first:
        out[0] = lines[0]
    return "\n".join(out)


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _CappedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr not in _SAFE_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # no str.format at all: is_safe_attribute refuses it

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _check_size(len(seq) * max(n, 0), "'*'")
        elif operator == "+":
            _check_size(_length(left) + _length(right), "'+'")
        elif operator == "**":
            if isinstance(right, int) and abs(right) > _MAX_EXPONENT:
                raise SandboxError(f"'**' exponent over {_MAX_EXPONENT}")
        elif operator == "%" and isinstance(left, str):
            raise SandboxError("'%' string formatting is not allowed in prompts")
        return super().call_binop(context, operator, left, right)

    def capped_concat(self, parts: tuple[Any, ...]) -> str:
        texts = [str(p) for p in parts]
        _check_size(sum(map(len, texts)), "'~'")
        return "".join(texts)


class PromptSandbox:
    """Compiles (cached by content hash) and renders prompt templates within a character cap."""

    def __init__(self, *, max_chars: int = DEFAULT_MAX_CHARS, cache_size: int = 512) -> None:
        self.max_chars = max_chars
        self.env = _Environment(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        for name in _REMOVED_FILTERS:
            self.env.filters.pop(name, None)
        self.env.filters.update(replace=_replace, join=_join, indent=_indent)
        self.env.globals.pop("lipsum", None)
        self.env.globals["range"] = _range
        self._cache: OrderedDict[str, Template] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def compile(self, source: str) -> Template:
        """Compile ``source`` (a :class:`SandboxError` names what is wrong)."""
        try:
            return self.env.from_string(source)
        except TemplateError as exc:
            raise SandboxError(f"template does not compile: {exc}") from None

    def template(self, key: str, source: str) -> Template:
        """The compiled template for ``source``, cached under ``key`` (e.g. ``<hash>:<index>``)."""
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        compiled = self.compile(source)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def render(self, templates: list[Template], variables: Mapping[str, Any]) -> list[str]:
        """Render each template with ``variables``; all of them together stay within ``max_chars``."""
        token = _BUDGET.set(_Budget(max_chars=self.max_chars))
        try:
            out: list[str] = []
            total = 0
            for template in templates:
                parts: list[str] = []
                for chunk in template.generate(dict(variables)):
                    total += len(chunk)
                    if total > self.max_chars:
                        raise RenderLimitError(f"the rendered prompt is over the cap of {self.max_chars:,} characters")
                    parts.append(chunk)
                out.append("".join(parts))
            return out
        except SecurityError as exc:
            raise SandboxError(f"refused by the sandbox: {exc}") from None
        except SandboxError:
            raise
        except TemplateError as exc:  # StrictUndefined: a variable without a value, a bad filter call
            raise SandboxError(f"{type(exc).__name__}: {exc}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
            raise SandboxError(f"{type(exc).__name__}: {exc}") from None
        finally:
            _BUDGET.reset(token)
