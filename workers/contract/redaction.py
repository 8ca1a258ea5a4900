"""One scrubber for credentials in text that leaves a worker or the gateway.

Used on log records (``workers/runtime/telemetry.py``), on every error message a job's result or
events carry (:meth:`LLMQError.to_info`), and on gateway error bodies. It catches:

* provider keys (``sk-...``, ``sk-ant-...``, ``pk-``/``rk-``), whole or partly masked;
* the value after a credential label (``Authorization: Bearer ...``, ``api_key=...``,
  ``"x-api-key": "..."``, ``token=``, ``secret=``, ``password=``), label kept;
* masked echoes of a key, as providers quote them back (OpenAI's 401 says
  ``Incorrect API key provided: invalid-*****2345``): a word with a run of ``***`` in it.

The provider clients also replace their exact configured key (``errormap.redact``); this is the
pattern net behind it, for keys we do not hold (a caller's) and for masked forms.
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_SECRETS = re.compile(
    r"(?i)(\b(?:api[_-]?key|x-api-key|authorization|token|secret|password)[\"']?\s*[=:]\s*[\"']?(?:bearer\s+)?"
    r"|\bbearer\s+)[^\s,;\"'}]+"
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_*.-]{3,}"
    r"|[A-Za-z0-9_-]+\*{3,}[A-Za-z0-9_-]*|\*{3,}[A-Za-z0-9_-]+"
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[redacted]``."""
    if not text:
        return text
    return _SECRETS.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
