"""Turning a job into chat messages: ``messages`` as given, a published ``prompt``, or ``template``.

- ``prompt``: the version the producer resolved (``name`` + ``version``, checked against the
  ``hash`` the producer validated with) is read from Redis and rendered in the sandbox. Versions
  are immutable, so they and their compiled templates are cached by hash for the process.
- ``template``: one line of plain ``{name}`` placeholders (the contract refuses format specs,
  conversions and attribute access); its size is computed before the string is built.

Both are capped at ``max_chars`` (``LLMQ_PROMPT_MAX_CHARS``): a clear :class:`PromptError`, never
a worker's memory. The Jinja2 sandbox and jsonschema (~5 MB together) are imported with the first
``prompt`` job: a worker whose jobs bring their messages does not hold them.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from workers.contract import CompletionJob, Message, PromptInfo, PromptRef, PromptVersion
from workers.contract.job import template_fields
from workers.llm.errors import PromptError
from workers.prompts.limits import DEFAULT_MAX_CHARS, SandboxError
from workers.prompts.store import PromptStore, UnknownPromptError

if TYPE_CHECKING:
    import jsonschema

    from workers.prompts.sandbox import PromptSandbox

__all__ = ["PromptRenderer", "Rendered", "render_inline", "render_job", "render_version"]


@dataclass(frozen=True)
class Rendered:
    messages: list[Message]
    #: The published version the messages came from (None for ``messages`` and ``template``).
    prompt: PromptInfo | None = None


def render_inline(template: str, variables: Mapping[str, str], *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Fill plain ``{name}`` placeholders; the size is checked before anything is built."""
    try:
        parts = template_fields(template)
    except ValueError as exc:
        raise PromptError(str(exc)) from None
    size = 0
    for literal, name in parts:
        size += len(literal)
        if name is not None:
            if name not in variables:
                raise PromptError(f"template variable {name!r} has no value")
            size += len(variables[name])
    if size > max_chars:
        raise PromptError(f"the rendered template would be {size:,} characters, over the cap of {max_chars:,}")
    return "".join(literal + (variables[name] if name is not None else "") for literal, name in parts)


def render_version(version: PromptVersion, variables: Mapping[str, object], sandbox: PromptSandbox) -> list[Message]:
    """The version's messages rendered with ``variables`` (a :class:`SandboxError` on refusal)."""
    templates = [sandbox.template(f"{version.hash}:{i}", m.content) for i, m in enumerate(version.messages)]
    texts = sandbox.render(templates, variables)
    return [Message(role=m.role, content=text) for m, text in zip(version.messages, texts, strict=True)]


class PromptRenderer:
    """Renders jobs for one worker process: one sandbox, versions cached by hash."""

    def __init__(self, client: redis.Redis, *, max_chars: int = DEFAULT_MAX_CHARS, cache_size: int = 256) -> None:
        self.store = PromptStore(client)
        self.max_chars = max_chars
        self._versions: OrderedDict[tuple[str, int], PromptVersion] = OrderedDict()
        self._validators: OrderedDict[str, jsonschema.Draft202012Validator] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @functools.cached_property
    def sandbox(self) -> PromptSandbox:
        """The process's Jinja2 sandbox, built (and Jinja2 imported) for the first ``prompt`` job."""
        from workers.prompts.sandbox import PromptSandbox

        return PromptSandbox(max_chars=self.max_chars)

    def render(self, job: CompletionJob) -> Rendered:
        if job.messages is not None:
            return Rendered(list(job.messages))
        if job.prompt is not None:
            return self._render_prompt(job.prompt)
        if job.template is not None:
            return Rendered(
                [Message(role="user", content=render_inline(job.template, job.variables, max_chars=self.max_chars))]
            )
        raise PromptError("the job has no messages, prompt or template")

    def _render_prompt(self, ref: PromptRef) -> Rendered:
        if ref.version is None:
            raise PromptError(
                f"prompt {ref.name} label {ref.label!r} was not resolved to a version: producers resolve labels "
                "at submit (use producers.Client, AsyncClient, the gateway or llmq batch)"
            )
        version = self._version(ref.name, ref.version)
        if ref.hash is not None and ref.hash != version.hash:
            raise PromptError(
                f"prompt {ref.name} v{ref.version} in Redis (hash {version.hash[:12]}) is not the one the job was "
                f"submitted with (hash {ref.hash[:12]})"
            )
        problem = self._invalid_variables(version, ref.variables)
        if problem:  # the producer checked them; a payload sent past it is checked here too
            raise PromptError(f"prompt {ref.name} v{ref.version}: {problem}")
        try:
            messages = render_version(version, ref.variables, self.sandbox)
        except SandboxError as exc:
            raise PromptError(f"prompt {ref.name} v{ref.version}: {exc}") from None
        return Rendered(messages, version.info)

    def _invalid_variables(self, version: PromptVersion, variables: Mapping[str, object]) -> str | None:
        with self._lock:
            validator = self._validators.get(version.hash)
        if validator is None:
            import jsonschema

            validator = jsonschema.Draft202012Validator(dict(version.input))
            with self._lock:
                self._validators[version.hash] = validator
                while len(self._validators) > self._cache_size:
                    self._validators.popitem(last=False)
        import jsonschema.exceptions

        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(variables)))
        if error is None:
            return None
        where = ".".join(str(p) for p in error.absolute_path)
        return f"variables{'.' + where if where else ''}: {error.message}"

    def _version(self, name: str, number: int) -> PromptVersion:
        key = (name, number)
        with self._lock:
            cached = self._versions.get(key)
            if cached is not None:
                self._versions.move_to_end(key)
                return cached
        try:
            version = self.store.get(name, number)
        except UnknownPromptError as exc:
            raise PromptError(str(exc)) from None
        with self._lock:
            self._versions[key] = version
            while len(self._versions) > self._cache_size:
                self._versions.popitem(last=False)
        return version


_RENDERERS: dict[tuple[int, int], PromptRenderer] = {}
_RENDERERS_LOCK = threading.Lock()


def render_job(job: CompletionJob, client: redis.Redis, *, max_chars: int = DEFAULT_MAX_CHARS) -> Rendered:
    """The job's messages (and prompt version), with one :class:`PromptRenderer` per Redis client."""
    if job.messages is not None:  # most jobs: no renderer needed
        return Rendered(list(job.messages))
    key = (id(client), max_chars)
    with _RENDERERS_LOCK:
        renderer = _RENDERERS.get(key)
        if renderer is None or renderer.store.redis is not client:
            renderer = _RENDERERS[key] = PromptRenderer(client, max_chars=max_chars)
            if len(_RENDERERS) > 64:
                _RENDERERS.pop(next(iter(_RENDERERS)))
    return renderer.render(job)
