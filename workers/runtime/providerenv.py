"""The environment the built-in providers are built from, and what a worker says about it at start.

Each built-in provider (``openai``, ``anthropic``, ``ollama``) reads its official variables
(``workers/contract/providers.py`` ``BUILTIN_ENV``). A provider with neither a key nor a base URL
would send its jobs to the real API without credentials; a worker says so once at start, naming the
variables (and the simulator's). With ``LLMQ_SIMULATOR_URL`` set, such a provider talks to the
simulator instead: one variable for a local or compose setup where the real API is used whenever
its key is set, the simulator otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from workers.contract.providers import BUILTIN_ENV, SIMULATOR_URL_ENV

__all__ = ["provider_environment"]

log = logging.getLogger("llmq.worker")

#: Where each built-in goes when nothing is set (the official SDKs' defaults).
_DEFAULT_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
}


def provider_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``LLMQ_SIMULATOR_URL`` applied; a warning logged for each built-in left without either."""
    out = dict(env)
    simulator = (env.get(SIMULATOR_URL_ENV) or "").rstrip("/")
    for name, (key_var, base_var, suffix) in BUILTIN_ENV.items():
        if env.get(key_var) or env.get(base_var):
            continue
        if simulator:
            out[base_var] = f"{simulator}{suffix}"
            log.info(
                "%s: no %s or %s set: %s:* jobs go to the simulator at %s", name, key_var, base_var, name, simulator
            )
            continue
        hint = (
            f"(llmq simulate: {base_var}=http://127.0.0.1:8790{suffix}, or {SIMULATOR_URL_ENV}=http://127.0.0.1:8790 "
            "for every provider without a key or base URL of its own)"
        )
        if name == "ollama":  # a local server needs no key
            log.warning(
                "%s: %s is not set: %s:* jobs go to %s (Ollama's default); set %s=<url> %s",
                name, base_var, name, _DEFAULT_URLS[name], base_var, hint,
            )  # fmt: skip
        else:
            log.warning(
                "%s: neither %s nor %s is set: %s:* jobs go to %s without a key and fail; set %s, or %s=<url> %s",
                name, key_var, base_var, name, _DEFAULT_URLS[name], key_var, base_var, hint,
            )  # fmt: skip
    return out
