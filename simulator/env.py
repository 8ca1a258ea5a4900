"""Where a worker finds the simulator: the provider base-URL variables (no server imports), and
``[providers.*]`` entries for the wire formats that have no environment variables of their own."""

from __future__ import annotations

from workers.contract.providers import BUILTIN_ENV

__all__ = ["SIM_AWS_KEY_ID", "SIM_AWS_SECRET", "SIM_KEY", "provider_config", "provider_env", "worker_env"]

#: The key every simulated provider accepts (the simulator checks that one is sent, not its value).
SIM_KEY = "sk-llmq-simulator"
#: Signing credentials for the simulated Bedrock (it checks that requests are signed, not the signature).
SIM_AWS_KEY_ID, SIM_AWS_SECRET = "AKIDLLMQSIMULATOR000", "llmq-simulator-not-a-real-aws-secret"


def worker_env(url: str) -> dict[str, str]:
    """The base-URL variables that point a worker's built-in providers at a simulator at ``url``."""
    return {base: f"{url}{suffix}" for _, base, suffix in BUILTIN_ENV.values()}


def provider_env(url: str) -> dict[str, str]:
    """The environment that points every built-in provider of a worker at a simulator at ``url``,
    plus the keys the :func:`provider_config` entries name."""
    return {
        **worker_env(url),
        "LLMQ_SIM_API_KEY": SIM_KEY,
        "AWS_ACCESS_KEY_ID": SIM_AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SIM_AWS_SECRET,
    }


def provider_config(url: str, *, bedrock: bool = True) -> str:
    """``[providers.*]`` TOML for the simulator's other wire formats: ``azure``, ``gemini`` and
    (when the worker has the AWS extra) ``bedrock``, named as their types."""
    entries = [
        f'[providers.azure]\ntype = "azure"\nbase_url = "{url}"\napi_key_env = "LLMQ_SIM_API_KEY"\n'
        'api_version = "2024-10-21"\n',
        f'[providers.gemini]\ntype = "gemini"\nbase_url = "{url}/v1beta"\napi_key_env = "LLMQ_SIM_API_KEY"\n',
    ]
    if bedrock:
        entries.append(f'[providers.bedrock]\ntype = "bedrock"\nbase_url = "{url}"\nregion = "us-east-1"\n')
    return "\n".join(entries)
