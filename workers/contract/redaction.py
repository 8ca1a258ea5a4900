"""One scrubber for credentials in text that leaves a worker or the gateway.

Used on log records (``workers/runtime/telemetry.py``), on every error message a job's result or
events carry (:meth:`LLMQError.to_info`), and on gateway error bodies. It catches:

* provider keys (``sk-...``, ``sk-ant-...``, ``pk-``/``rk-``), whole or partly masked;
* the value after a credential label (``Authorization: Bearer ...``, ``api_key=...``,
  ``"x-api-key": "..."``, ``token=``, ``secret=``, ``password=``), label kept;
* masked echoes of a key, as providers quote them back (OpenAI's 401 says
  ``Incorrect API key provided: invalid-*****2345``): a word with a run of ``***`` in it.

It leaves instructions alone: the word after a bare ``Bearer`` when it is a plain lowercase word
(``using Bearer auth``), and placeholders after a label (``Authorization: Bearer YOUR_KEY``,
``api_key=$OPENAI_API_KEY``, ``<token>``, ``...``, an earlier ``[redacted]``), so a message that
tells a caller how to send a key still reads as written.

The provider clients also replace their exact configured key (``errormap.redact``); this is the
pattern net behind it, for keys we do not hold (a caller's) and for masked forms.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["monitor_repr", "redact", "shown_url"]

_SECRETS = re.compile(
    r"(?i)(?:(\b(?:api[_-]?key|x-api-key|authorization|token|secret|password)[\"']?\s*[=:]\s*[\"']?(?:bearer\s+)?)"
    r"|(\bbearer\s+))([^\s,;\"'}]+)"
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_*.-]{3,}"
    r"|[A-Za-z0-9_-]+\*{3,}[A-Za-z0-9_-]*|\*{3,}[A-Za-z0-9_-]+"
)
#: What stands for a credential in an instruction, not a credential: a capitalised name with a word
#: such as KEY or TOKEN in it (``YOUR_KEY``, ``$OPENAI_API_KEY``, ``${TOKEN}``; an ``AKIA...`` key id
#: has none), ``<...>``, ``{...}``, ``...``, ``xxx``, an earlier ``[redacted]``; never with a digit in it.
_PLACEHOLDER = re.compile(
    r"\$?\{?(?:[A-Z]+_)*(?:KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?|YOUR)(?:_[A-Z]+)*\}?"
    r"|<[^<>]*>?|\{[^{}]*\}|\.{3}|…|x{3,}|X{3,}|\[redacted\]?"
)
#: Punctuation that ends a sentence around a value (``Bearer YOUR_KEY).``): not part of it.
_TRAILING = ").,:;!?]"


#: Every match of :data:`_SECRETS` contains one of these (ASCII text, lowercased): text without
#: any is returned as it is, without running the pattern (a worker scrubs every field of every
#: log line; the pattern was ~2 % of a short job's CPU).
_TRIGGERS = ("***", "sk-", "pk-", "rk-", "api", "bearer", "token", "secret", "password", "authorization")


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[redacted]``."""
    if not text:
        return text
    if text.isascii():  # (case folding outside ASCII is the pattern's own business)
        low = text.lower()
        if not any(trigger in low for trigger in _TRIGGERS):
            return text
    return _SECRETS.sub(_scrub, text)


def _scrub(match: re.Match[str]) -> str:
    labelled, bare, value = match.group(1, 2, 3)
    if value is None:  # a key by its own shape (sk-...) or a masked echo
        return "[redacted]"
    word = value.rstrip(_TRAILING) or value
    if bare and word.isascii() and word.isalpha() and word.islower():
        return match.group(0)  # a word after a bare "Bearer" ("using Bearer auth"), not a token
    if not any(c.isdigit() for c in word) and _PLACEHOLDER.fullmatch(word):
        return match.group(0)  # an instruction ("Authorization: Bearer YOUR_KEY"), not a credential
    return (labelled or bare) + "[redacted]"


def shown_url(url: str) -> str:
    """``url`` fit for a terminal or a log line: the password of its ``user:password@`` part masked."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def monitor_repr(job: Mapping[str, Any]) -> str:
    """What Flower and Celery task events show of a job (``argsrepr``): ids and sizes, no content.

    Message text, template variables and tool arguments stay out of the monitors unless a
    deployment turns content on (``LLMQ_MONITOR_CONTENT=1``).
    """
    messages = job.get("messages") or []
    chars = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, Mapping))
    summary = {
        "id": job.get("id"),
        "model": job.get("model"),
        "fallbacks": job.get("fallbacks") or [],
        "tenant": job.get("tenant", "default"),
        "messages": len(messages),
        "chars": chars,
        "tools": len(job.get("tools") or []),
        "max_tokens": job.get("max_tokens"),
        "stream": job.get("stream", True),
    }
    metadata = job.get("metadata")
    if metadata:  # caller's tags (custom_id...): credential-like keys are rejected at validation
        summary["metadata"] = metadata
    prompt = job.get("prompt")
    if isinstance(prompt, Mapping):
        summary["prompt"] = prompt.get("name")
    return "(" + json.dumps(summary, separators=(",", ":")) + ",)"
