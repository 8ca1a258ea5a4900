"""The routes file (TOML, path from ``LLMQ_CONFIG``): aliases, per-model limits, prices, budget.

Example::

    [providers.azure-eu]                 # named providers: workers/contract/providers.py
    type = "azure"
    base_url = "https://my-resource.openai.azure.com"
    api_key_env = "AZURE_EU_API_KEY"
    api_version = "2024-10-21"

    [routes]
    default = ["azure-eu:gpt-4o", "openai:gpt-4o", "anthropic:claude-sonnet-4-5"]
    cheap = ["openai:gpt-4o-mini"]

    [models."openai:gpt-4o"]
    max_retries = 3
    ttft_limit_s = 20
    rpm = 500
    tpm = 200000
    input_per_mtok = 2.5        # price overrides (USD per million tokens)
    output_per_mtok = 10.0
    context_window = 128000

    [budget]
    monthly_usd = 500
    kill_switch_ratio = 0.9
    unpriced = "reject"         # or "allow_unpriced"

    [budget.tags]               # monthly limits per tag and per end user (also: llmq budget set --tag)
    checkout = 100
    [budget.users]
    "u-42" = 5

    [spend]                     # rows of their own per day and month in `llmq spend` (the rest: other)
    users = 1000

    [gateway.tokens]
    "secret-token-a" = "team-a"

    [tools]
    modules = ["workers.tools.examples"]   # imported at worker start (also LLMQ_TOOLS)
    timeout_s = 30

    [scheduling]                  # workers/contract/schedule.py, docs/scheduling.md
    weights = { interactive = 8, normal = 4, bulk = 1 }

    [tenants.acme]
    weight = 3                    # share of its class against other tenants (unknown tenants weigh 1)
    max_concurrency = 20          # running at once, across all workers
    max_queued = 50000            # a submit past this is refused (QueueFullError, HTTP 429)

    [model_families]              # a bare model name -> the provider that serves it (first match wins,
    "llama*" = "ollama"           # then the built-in gpt-*, chatgpt-*, o[0-9]* -> openai, claude-* -> anthropic)

Every table forbids unknown keys, so a typo fails at start-up with the key's dotted path and the
nearest known key ("did you mean max_retries?").
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workers.contract import CacheSpec, split_model_id
from workers.contract.catalog import close_names
from workers.contract.fieldnames import unknown_key_message
from workers.contract.providers import BUILTIN_PROVIDERS, ProviderSpec, check_provider_names
from workers.contract.schedule import TENANT_NAME, SchedulingConfig, TenantConfig
from workers.llm.errors import ConfigurationError

__all__ = [
    "BatchConfig",
    "BudgetConfig",
    "CacheConfig",
    "LLMQConfig",
    "ModelConfig",
    "SpendConfig",
    "ToolsConfig",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    max_retries: Annotated[int, Field(ge=0, le=10)] | None = None
    initial_backoff_s: Annotated[float, Field(gt=0)] | None = None
    max_backoff_s: Annotated[float, Field(gt=0)] | None = None
    #: Time-to-first-token limit: a slower first token falls back to the next model.
    ttft_limit_s: Annotated[float, Field(gt=0)] | None = None
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    #: Requests / tokens that may go at once (defaults: 100 ms of ``rpm``; a minute of ``tpm``).
    rpm_burst: Annotated[int, Field(gt=0)] | None = None
    tpm_burst: Annotated[int, Field(gt=0)] | None = None
    #: How long a worker may hold RPM/TPM capacity it took ahead of use (0 = never take any);
    #: only used for rpm >= 1200 or TPM-only limits. See ``workers/guards/leases.py``.
    rate_lease_ms: Annotated[int, Field(ge=0, le=1000)] = 100
    input_per_mtok: Annotated[float, Field(ge=0)] | None = None
    output_per_mtok: Annotated[float, Field(ge=0)] | None = None
    #: Prompt-cache rates (default: genai-prices', else the input rate).
    cache_read_per_mtok: Annotated[float, Field(ge=0)] | None = None
    cache_write_per_mtok: Annotated[float, Field(ge=0)] | None = None
    #: 1-hour prompt-cache writes (default: twice the input rate, Anthropic's rule).
    cache_write_1h_per_mtok: Annotated[float, Field(ge=0)] | None = None
    context_window: Annotated[int, Field(gt=0)] | None = None
    #: This model's provider-batch (and flex) price as a share of its price (default: ``[batch] discount``).
    batch_discount: Annotated[float, Field(gt=0, le=1)] | None = None
    #: Circuit breaker: open after this many failures within ``breaker_window_s``.
    breaker_failures: Annotated[int, Field(gt=0)] | None = None
    breaker_window_s: Annotated[float, Field(gt=0)] | None = None
    breaker_cooldown_s: Annotated[float, Field(gt=0)] | None = None
    #: ...and at least this share of the window's calls failed (default 0.8; 0 = the count alone).
    breaker_failure_ratio: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _bucket_shape(self) -> ModelConfig:
        if self.rpm_burst is not None and self.rpm is None:
            raise ValueError("rpm_burst needs rpm")
        if self.tpm_burst is not None and self.tpm is None:
            raise ValueError("tpm_burst needs tpm")
        # the buckets' own shape (burst <= rpm, room left for refill) is the limiter's to judge:
        # workers.guards.policy.check_limits, run when a worker's guards start
        return self


class BudgetConfig(_Strict):
    monthly_usd: Annotated[float, Field(ge=0)] | None = None
    kill_switch_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    unpriced: Literal["reject", "allow_unpriced"] = "reject"
    tenants: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    #: Monthly limits per tag and per end user (``llmq budget set --tag/--user`` stores one in Redis).
    tags: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    users: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)


class SpendConfig(_Strict):
    """The ``[spend]`` table: how many values of each dimension keep a row of their own in the spend
    report per day and month (the rest is summed as ``other``), and how long day rows are kept.
    See ``workers/accounting/spendreport.py``."""

    tenants: Annotated[int, Field(ge=1)] = 1000
    models: Annotated[int, Field(ge=1)] = 200
    tags: Annotated[int, Field(ge=1)] = 500
    users: Annotated[int, Field(ge=1)] = 1000
    days: Annotated[int, Field(ge=1, le=400)] = 120


class CacheConfig(_Strict):
    """The ``[cache]`` table: the response cache's bounds, and routes whose jobs are cached.

    Example::

        [cache]
        max_bytes = 67108864        # all stored answers together (the oldest-expiring go first)
        max_entry_bytes = 1048576   # a larger answer is not stored
        [cache.routes]
        cheap = { ttl_s = 600 }     # every job sent to the `cheap` alias, unless it says otherwise
    """

    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[int, Field(ge=256)] = 1024 * 1024
    routes: dict[str, CacheSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _entry_fits(self) -> CacheConfig:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes must not exceed max_bytes")
        return self


class GatewayConfig(_Strict):
    #: bearer token -> tenant
    tokens: dict[str, str] = Field(default_factory=dict)


class ToolsConfig(_Strict):
    """The ``[tools]`` table: which modules to import, limits of the tool loop.

    Example::

        [tools]
        modules = ["myapp.tools", "workers.tools.examples"]
        timeout_s = 30              # per call, unless the tool or [tools.timeouts] says otherwise
        max_result_bytes = 65536    # a longer result is cut (and says so)
        max_parallel = 4            # calls of one turn running at once, per job
        max_turns = 10              # model turns per job, unless the job sets max_turns
        max_invalid = 2             # invalid calls of one tool before the job fails (tool_arguments)

        [tools.timeouts]
        get_weather = 5
    """

    modules: list[str] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_result_bytes: Annotated[int, Field(ge=256)] = 64 * 1024
    max_parallel: Annotated[int, Field(ge=1, le=64)] = 4
    max_turns: Annotated[int, Field(ge=1, le=100)] = 10
    max_invalid: Annotated[int, Field(ge=1)] = 2
    timeouts: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)


class WebhookEndpoint(_Strict):
    """A named webhook: ``[webhooks.endpoints.<name>]``."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/@]+(/\S*)?$")]
    #: The environment variable holding its secret (``whsec_<base64>``; during a rotation the new
    #: and the old one, space-separated: deliveries carry a signature of each)...
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    #: ...or the secret itself (the config file is then as secret as the gateway tokens in it).
    secret: str | None = Field(default=None, min_length=1, repr=False)


class WebhooksConfig(_Strict):
    """The ``[webhooks]`` table: named endpoints, per-tenant defaults, delivery policy.

    Example::

        [webhooks]
        secret_env = "LLMQ_WEBHOOK_SECRET"   # signs deliveries to URLs given in jobs (the default)
        allow_networks = ["10.20.0.0/16"]    # private ranges deliveries may reach (default: none)
        timeout_s = 10
        max_age_s = 86400                    # retries stop this long after the job ended
        backoff_s = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800]   # the last repeats

        [webhooks.endpoints.billing]
        url = "https://hooks.example.com/llmq"
        secret_env = "BILLING_WEBHOOK_SECRET"

        [webhooks.tenants]
        team-a = "billing"                   # every team-a job without a webhook of its own
    """

    endpoints: dict[str, WebhookEndpoint] = Field(default_factory=dict)
    tenants: dict[str, str] = Field(default_factory=dict)
    secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "LLMQ_WEBHOOK_SECRET"
    #: Networks (CIDR) a delivery may connect to although they are loopback, private or link-local.
    allow_networks: list[str] = Field(default_factory=list)
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    max_age_s: Annotated[float, Field(gt=0)] = 86_400.0
    backoff_s: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0], min_length=1
    )
    #: Deliveries in flight at once per worker process.
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return networks

    @model_validator(mode="after")
    def _tenants_known(self) -> WebhooksConfig:
        for tenant, name in self.tenants.items():
            if name not in self.endpoints:
                raise ValueError(f"tenant {tenant!r} names webhook {name!r}, which is not in [webhooks.endpoints]")
        return self


class BatchConfig(_Strict):
    """The ``[batch]`` table: provider batch APIs behind jobs that may wait (``batch: "allow"|"auto"``).

    Example::

        [batch]
        discount = 0.5          # batch price = this x the live price (OpenAI and Anthropic: half)
        window_s = 86400        # the providers' completion window (24 h)
        margin_s = 3600         # "auto": a deadline must leave window + margin to go to a batch
        live_margin_s = 900     # a line still pending this close to its deadline runs live
        max_lines = 10000       # lines per provider batch (and the provider's own limit)
        max_age_s = 60          # a group of waiting lines is sent after this long, full or not
        poll_s = 30             # seconds between two polls of a running batch
        flex = ["o3*", "o4-mini*", "gpt-5*"]   # OpenAI models with service_tier "flex"
    """

    enabled: bool = True
    #: Whether this worker runs a batcher thread (one at a time works, under a lease; false: others do).
    batcher: bool = True
    #: With a batcher: producers hand a job that may wait straight to the batch lane (no queue message,
    #: no worker run before its batch; false: each such job is queued and parked by a run).
    intake: bool = True
    discount: Annotated[float, Field(gt=0, le=1)] = 0.5
    window_s: Annotated[float, Field(gt=0)] = 86_400.0
    margin_s: Annotated[float, Field(ge=0)] = 3_600.0
    live_margin_s: Annotated[float, Field(ge=0)] = 900.0
    max_lines: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    max_age_s: Annotated[float, Field(ge=0)] = 60.0
    poll_s: Annotated[float, Field(gt=0)] = 30.0
    #: How long the batcher's lock lasts without renewal (a killed batcher's successor waits this long).
    lock_s: Annotated[float, Field(gt=0)] = 60.0
    #: ``fnmatch`` patterns of OpenAI models that offer ``service_tier: "flex"`` (the middle way for
    #: ``batch: "auto"`` jobs whose deadline is too short for a batch).
    flex: list[str] = Field(default_factory=lambda: ["o3*", "o4-mini*", "gpt-5*"])


class LLMQConfig(_Strict):
    #: Named providers (``workers/contract/providers.py``): ``<name>:<model>`` ids use them.
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    routes: dict[str, list[str]] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    spend: SpendConfig = Field(default_factory=SpendConfig)
    #: The response cache: bounds and cached routes (:class:`CacheConfig`).
    cache: CacheConfig = Field(default_factory=CacheConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    #: Worker tools: modules to import, timeouts, loop limits (:class:`ToolsConfig`).
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    #: Webhooks: named endpoints, per-tenant defaults, retries (:class:`WebhooksConfig`).
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    #: Class weights and concurrency-key caps (``workers/contract/schedule.py``).
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    #: Per tenant: weight, max_concurrency, max_queued, key_concurrency (``"*"``: the defaults).
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    #: Bare model names -> provider, by ``fnmatch`` pattern, before the built-in families
    #: (``workers/contract/catalog.py``): ``"llama*" = "ollama"``.
    model_families: dict[str, str] = Field(default_factory=dict)
    #: Seconds a retry may sleep inside the worker; longer waits re-queue the job.
    max_inworker_wait_s: Annotated[float, Field(ge=0)] = 10.0
    #: Re-queues a job may take for such waits; one more ends it failed (``requeue_limit``), so a
    #: job without a deadline cannot circle forever behind a model that keeps saying "later".
    max_requeues: Annotated[int, Field(ge=0)] = 20
    #: Provider batch APIs behind jobs that may wait (:class:`BatchConfig`).
    batch: BatchConfig = Field(default_factory=BatchConfig)

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: dict[str, list[str]]) -> dict[str, list[str]]:
        for alias, chain in routes.items():
            if not chain:
                raise ValueError(f"route {alias!r} is empty")
            for model in chain:
                split_model_id(model)  # raises for a non provider:model entry
        return routes

    @field_validator("providers")
    @classmethod
    def _providers(cls, providers: dict[str, ProviderSpec]) -> dict[str, ProviderSpec]:
        check_provider_names(providers)
        return providers

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, tenants: dict[str, TenantConfig]) -> dict[str, TenantConfig]:
        for name in tenants:
            if not TENANT_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a tenant name (1-64 letters, digits, '_', '.', '-') or '*'")
        return tenants

    @field_validator("models")
    @classmethod
    def _models(cls, models: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for model in models:
            split_model_id(model)
        return models

    @field_validator("model_families")
    @classmethod
    def _families(cls, families: dict[str, str]) -> dict[str, str]:
        for pattern, provider in families.items():
            if not pattern.strip():
                raise ValueError("a model family's pattern must not be empty")
            if not _PROVIDER.match(provider):
                raise ValueError(f"{pattern!r} = {provider!r}: the value must be a provider name such as 'openai'")
        return families

    @model_validator(mode="after")
    def _providers_known(self) -> LLMQConfig:
        """Every provider a route, a ``[models."..."]`` table or a family names is one the workers
        will have (a built-in or a ``[providers.<name>]`` entry): a typo (``opneai:gpt-4o``) would
        otherwise start and fail each job that reaches it."""
        known = sorted({*BUILTIN_PROVIDERS, *self.providers})
        named = [(f"routes.{alias}", model) for alias, chain in self.routes.items() for model in chain]
        named += [(f'models."{model}"', model) for model in self.models]
        for where, model in named:
            provider = model.partition(":")[0]
            if provider not in known:
                guesses = [f"{p}:{model.partition(':')[2]}" for p in close_names(provider, known)]
                meant = f"; did you mean {guesses[0]!r}?" if guesses else ""
                raise ValueError(
                    f"{where}: unknown provider {provider!r} in {model!r} (built in: {', '.join(sorted(BUILTIN_PROVIDERS))}; "
                    f"others need a [providers.<name>] entry){meant}"
                )
        return self

    @model_validator(mode="after")
    def _cached_routes_known(self) -> LLMQConfig:
        """Every ``[cache.routes]`` entry names a route alias (``default`` included): jobs are matched
        by the alias they name, so a typo would silently cache nothing."""
        aliases = sorted({*self.routes, "default"})
        for name in self.cache.routes:
            if name not in aliases:
                guesses = close_names(name, aliases)
                meant = f"; did you mean {guesses[0]!r}?" if guesses else ""
                raise ValueError(
                    f"cache.routes.{name}: {name!r} is not a route alias (routes: {', '.join(aliases)}){meant}"
                )
        return self

    def model(self, model_id: str) -> ModelConfig:
        return self.models.get(model_id) or _EMPTY_MODEL


_EMPTY_MODEL = ModelConfig()
_PROVIDER = re.compile(r"^[a-z][a-z0-9_-]*$")


def _problem(err: Any) -> str:
    """One validation error as ``dotted.path: message``, an unknown key with the nearest known one."""
    loc = err["loc"]
    if not loc and err["type"] == "value_error":  # a check of the whole file names its own place
        return str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden" and loc:
        return f"{where}: {unknown_key_message(LLMQConfig, loc)}"
    return f"{where}: {err['msg']}"


def load_config(path: str | Path | None) -> LLMQConfig:
    """Parse and validate the routes file; ``None`` gives the defaults."""
    if path is None:
        return LLMQConfig()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} (LLMQ_CONFIG) does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        return LLMQConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigurationError(f"invalid config file {path}: {problems}") from None
