"""What each provider can do with a request's parameters: one it cannot do is refused.

Checked at submit (``CompletionJob`` validation, for every ``provider:model`` in the job's chain;
:meth:`~workers.contract.job.CompletionJob.capability_problems`; producers also for the ids a route
alias or bare name resolves to) and again on the worker, so a parameter is never silently dropped:
the error names the provider and the field. A named provider (``[providers.<name>]``) is checked
by its type, and an OpenAI-compatible server's ``params`` list refuses what it leaves out; the
producer knows them from what the workers published (``providers.py``), the worker from its
config. Providers not listed here (custom registrations) are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from workers.contract.base import base_model_name
from workers.contract.images import ImageInfo
from workers.contract.messages import Message
from workers.contract.params import JsonObjectFormat, JsonSchemaFormat, NamedToolChoice, RequestParams, TextFormat
from workers.contract.providers import BUILTIN_PROVIDERS, ProviderInfo
from workers.contract.schemarefs import RecursiveRefError, inline_refs

__all__ = [
    "ANTHROPIC_MAX_IMAGES",
    "ANTHROPIC_MAX_IMAGE_BYTES",
    "GEMINI_MAX_CANDIDATES",
    "SAMPLING",
    "CapabilityError",
    "anthropic_native_structured",
    "problems",
]

ANTHROPIC_MAX_IMAGE_BYTES = 5 * 1024 * 1024
ANTHROPIC_MAX_IMAGES = 100
OLLAMA_EFFORTS = ("low", "medium", "high")

_CLAUDE_VERSION = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+)-(\d+)(?:$|-)")


class CapabilityError(ValueError):
    """``provider`` cannot do what ``field`` asks (a ``ValueError``, so pydantic reports it)."""

    def __init__(self, provider: str, field: str, message: str) -> None:
        super().__init__(f"{provider} does not support {field}: {message}")
        self.provider = provider
        self.field = field
        self.reason = message


def anthropic_native_structured(model: str) -> bool:
    """Whether an Anthropic model has native structured outputs (``output_config.format``).

    Claude Sonnet 4.5, Haiku 4.5, Opus 4.1 and newer; older models get a forced tool call.
    """
    match = _CLAUDE_VERSION.match(base_model_name(model))
    if match is None:
        return False
    family, major, minor = match.group(1), int(match.group(2)), int(match.group(3))
    if major > 4:
        return True
    return major == 4 and (minor >= 5 or (family == "opus" and minor >= 1))


#: The sampling parameters only some APIs have: the provider types whose adapters translate each
#: (Gemini: ``presencePenalty``, ``frequencyPenalty``, ``responseLogprobs``/``logprobs``,
#: ``candidateCount``; Ollama: the ``presence_penalty``/``frequency_penalty`` options and
#: ``logprobs``/``top_logprobs``). Any other
#: type refuses the parameter, naming its API. ``top_logprobs`` needs ``logprobs``, so goes with it.
SAMPLING: dict[str, frozenset[str]] = {
    "presence_penalty": frozenset({"openai", "azure", "gemini", "ollama"}),
    "frequency_penalty": frozenset({"openai", "azure", "gemini", "ollama"}),
    "logit_bias": frozenset({"openai", "azure"}),
    "logprobs": frozenset({"openai", "azure", "gemini", "ollama"}),
    "n": frozenset({"openai", "azure", "gemini"}),
}
_API = {
    "anthropic": "the Messages API",
    "bedrock": "Converse",
    "gemini": "the Gemini API",
    "ollama": "Ollama's chat API",
}
#: Gemini's ``candidateCount`` limit.
GEMINI_MAX_CANDIDATES = 8

#: The images of a request: (index of the message, what the contract read of the image).
Images = list[tuple[int, ImageInfo]]


def problems(
    params: RequestParams,
    model_id: str,
    providers: Mapping[str, ProviderInfo] | None = None,
    *,
    messages: Sequence[Message],
    tools: bool,
) -> list[CapabilityError]:
    """Every parameter in ``params`` (and image in ``messages``; ``tools``: the request offers tools)
    that ``model_id``'s provider cannot do (empty: all fine). A job asks with
    :meth:`~workers.contract.job.CompletionJob.capability_problems`.

    ``providers``: the named providers (``[providers.<name>]``) and their types; a name it does
    not list is its own type (``openai``, ``anthropic``, ``gemini``...).
    """
    provider, _, name = model_id.partition(":")
    info = (providers or {}).get(provider)
    kind = info.type if info is not None else BUILTIN_PROVIDERS.get(provider, provider)
    check = _CHECKS.get(kind)
    images = _images(messages)
    found = check(params, name, images, tools) if check is not None else []
    if check is not None:
        found = _sampling(params, kind) + found
    if provider != kind:  # errors name the provider as configured
        found = [CapabilityError(provider, e.field, e.reason) for e in found]
    if info is not None and info.params is not None:
        found += _accepted(params, images, tools, provider, info.params)
    return found


def _sampling_used(params: RequestParams) -> list[str]:
    """The :data:`SAMPLING` parameters a request uses (``n`` of 1 and ``logprobs: false`` ask nothing)."""
    used = [name for name in ("presence_penalty", "frequency_penalty") if getattr(params, name) is not None]
    if params.logit_bias:
        used.append("logit_bias")
    if params.logprobs:
        used.append("logprobs")
    if params.answers > 1:
        used.append("n")
    return used


def _sampling(params: RequestParams, kind: str) -> list[CapabilityError]:
    api = _API.get(kind, kind)
    return [
        CapabilityError(kind, name, f"{api} has no {name}")
        for name in _sampling_used(params)
        if kind not in SAMPLING[name]
    ]


def _set_params(params: RequestParams, images: Images, tools: bool) -> list[str]:
    """The optional parameters a request uses (``providers.OPTIONAL_PARAMS`` names)."""
    used = [n for n in ("temperature", "top_p", "seed", "user", "reasoning") if getattr(params, n) is not None]
    used += _sampling_used(params)
    if params.stop:
        used.append("stop")
    if tools:
        used.append("tools")
    if params.tool_choice is not None:
        used.append("tool_choice")
    if params.parallel_tool_calls is not None:
        used.append("parallel_tool_calls")
    if params.response_format is not None and not isinstance(params.response_format, TextFormat):
        used.append("response_format")
    if images:
        used.append("images")
    return used


def _accepted(
    params: RequestParams, images: Images, tools: bool, provider: str, accepted: list[str]
) -> list[CapabilityError]:
    """An OpenAI-compatible server takes only the parameters its ``params`` list names."""
    return [
        CapabilityError(provider, name, f"the server does not accept it (not in [providers.{provider}] params)")
        for name in _set_params(params, images, tools)
        if name not in accepted
    ]


def _structured(params: RequestParams) -> bool:
    return isinstance(params.response_format, JsonObjectFormat | JsonSchemaFormat)


def _images(messages: Sequence[Message]) -> Images:
    out: Images = []
    for i, m in enumerate(messages):
        out.extend((i, part.image_url.info) for part in m.images)
    return out


def _openai(job: RequestParams, model: str, images: Images, tools: bool) -> list[CapabilityError]:
    found: list[CapabilityError] = []
    if job.reasoning is not None and job.reasoning.budget_tokens is not None:
        found.append(
            CapabilityError("openai", "reasoning.budget_tokens", "OpenAI takes reasoning.effort, not a token budget")
        )
    return found


def _anthropic(job: RequestParams, model: str, images: Images, tools: bool) -> list[CapabilityError]:
    p = "anthropic"
    found: list[CapabilityError] = []
    if job.seed is not None:
        found.append(CapabilityError(p, "seed", "the Messages API has no seed"))
    forced_tool = _structured(job) and not (
        isinstance(job.response_format, JsonSchemaFormat) and anthropic_native_structured(model)
    )
    choice = job.tool_choice
    fmt = job.response_format
    if forced_tool and isinstance(fmt, JsonSchemaFormat) and fmt.json_schema.schema_.get("type") != "object":
        found.append(
            CapabilityError(
                p, "response_format", f"{model} answers through a tool call, whose schema must be of type 'object'"
            )
        )
    if forced_tool and (choice in ("required", "none") or isinstance(choice, NamedToolChoice)):
        found.append(CapabilityError(p, "tool_choice", f"{model} answers response_format through a forced tool call"))
    if job.reasoning is not None:
        found += _claude_thinking(p, job)
        if forced_tool:
            found.append(
                CapabilityError(p, "response_format", f"{model} needs a forced tool call, which thinking forbids")
            )
    if len(images) > ANTHROPIC_MAX_IMAGES:
        found.append(CapabilityError(p, "image_url", f"at most {ANTHROPIC_MAX_IMAGES} images per request"))
    for i, info in images:
        size = info.size_bytes
        if size is not None and size > ANTHROPIC_MAX_IMAGE_BYTES:
            found.append(
                CapabilityError(
                    p, f"messages[{i}].image_url", f"the image is {size} bytes; the limit is 5 MB per image"
                )
            )
    return found


def _claude_thinking(p: str, job: RequestParams) -> list[CapabilityError]:
    """What Claude's extended thinking forbids, on Anthropic's API and on Bedrock alike."""
    found: list[CapabilityError] = []
    if job.temperature is not None and job.temperature != 1.0:
        found.append(CapabilityError(p, "temperature", "extended thinking runs at temperature 1 only"))
    if job.top_p is not None and job.top_p < 0.95:
        found.append(CapabilityError(p, "top_p", "extended thinking needs top_p of at least 0.95"))
    if job.tool_choice == "required" or isinstance(job.tool_choice, NamedToolChoice):
        found.append(CapabilityError(p, "tool_choice", "extended thinking allows only 'auto' or 'none'"))
    if job.reasoning is not None and job.reasoning.anthropic_budget() >= job.max_tokens:
        found.append(CapabilityError(p, "reasoning", "the thinking budget must be below max_tokens (raise max_tokens)"))
    return found


def _ollama(job: RequestParams, model: str, images: Images, tools: bool) -> list[CapabilityError]:
    p = "ollama"
    found: list[CapabilityError] = []
    choice = job.tool_choice
    if choice == "required" or isinstance(choice, NamedToolChoice):
        found.append(CapabilityError(p, "tool_choice", "Ollama cannot force a tool call ('auto' or 'none' only)"))
    if job.parallel_tool_calls is False:
        found.append(CapabilityError(p, "parallel_tool_calls", "Ollama cannot limit a turn to one tool call"))
    if job.reasoning is not None:
        if job.reasoning.budget_tokens is not None:
            found.append(CapabilityError(p, "reasoning.budget_tokens", "Ollama's think takes no token budget"))
        elif job.reasoning.effort not in OLLAMA_EFFORTS:
            found.append(CapabilityError(p, "reasoning.effort", "Ollama's think takes low, medium or high"))
    for i, info in images:
        if info.kind == "url":
            found.append(
                CapabilityError(p, f"messages[{i}].image_url", "Ollama takes images as base64 data URLs, not links")
            )
    return found


def _links(images: Images, p: str, why: str) -> list[CapabilityError]:
    return [CapabilityError(p, f"messages[{i}].image_url", why) for i, info in images if info.kind == "url"]


def _recursive(schema: object) -> bool:
    try:
        inline_refs(schema)
    except RecursiveRefError:
        return True
    return False


def _gemini(job: RequestParams, model: str, images: Images, tools: bool) -> list[CapabilityError]:
    p = "gemini"
    found: list[CapabilityError] = []
    if job.parallel_tool_calls is False:
        found.append(CapabilityError(p, "parallel_tool_calls", "Gemini cannot limit a turn to one tool call"))
    if job.user is not None:
        found.append(CapabilityError(p, "user", "the Gemini API has no end-user field"))
    if job.answers > GEMINI_MAX_CANDIDATES:
        found.append(CapabilityError(p, "n", f"Gemini generates at most {GEMINI_MAX_CANDIDATES} candidates"))
    fmt = job.response_format
    if isinstance(fmt, JsonSchemaFormat) and _recursive(fmt.json_schema.schema_):
        # other $refs are inlined (schemarefs.py); a recursive one cannot be written out
        found.append(CapabilityError(p, "response_format", "Gemini's responseSchema cannot express a recursive $ref"))
    found += _links(images, p, "Gemini takes images as base64 data URLs, not links")
    return found


def _bedrock(job: RequestParams, model: str, images: Images, tools: bool) -> list[CapabilityError]:
    p = "bedrock"
    found: list[CapabilityError] = []
    if job.seed is not None:
        found.append(CapabilityError(p, "seed", "Converse has no seed"))
    if job.user is not None:
        found.append(CapabilityError(p, "user", "Converse has no end-user field"))
    if job.parallel_tool_calls is False:
        found.append(CapabilityError(p, "parallel_tool_calls", "Converse cannot limit a turn to one tool call"))
    if job.tool_choice == "none" and tools:
        found.append(CapabilityError(p, "tool_choice", "Converse has no 'none' (leave the tools out instead)"))
    if job.reasoning is not None:
        if "anthropic.claude" in model:  # also a region prefix (us.anthropic...) or an inference profile's ARN
            found += _claude_thinking(p, job)
        else:
            found.append(
                CapabilityError(p, "reasoning", f"{model}: reasoning on Bedrock is Claude's extended thinking")
            )
    found += _links(images, p, "Converse takes images as bytes (base64 data URLs), not links")
    return found


_CHECKS = {
    "openai": _openai,
    "azure": _openai,
    "anthropic": _anthropic,
    "ollama": _ollama,
    "gemini": _gemini,
    "bedrock": _bedrock,
}
