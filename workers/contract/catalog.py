"""Which model names a deployment accepts, and the one rule that turns a name into ``provider:model`` ids.

A job's ``model`` (and each fallback) is a ``provider:model`` id, a route alias from the config
(``default``, ``cheap``), or a bare model name as an OpenAI or Anthropic SDK user types it
(``gpt-4o-mini``, ``claude-sonnet-4-5``). :meth:`ModelCatalog.resolve` is the rule, used by the
worker when it builds a job's chain and by every producer (``Client``, ``AsyncClient``, the CLI,
batch validation, the gateway) before anything is enqueued:

1. ``provider:model`` -> itself, when the provider is one the workers have;
2. a route alias -> its chain (``default`` -> the worker's ``LLMQ_DEFAULT_MODEL`` unless a route
   of that name exists);
3. a bare name -> ``provider:name`` for the first model family whose pattern matches it: the config's
   ``[model_families]`` first (``"llama*" = "ollama"``), then :data:`DEFAULT_FAMILIES` (a name with a
   colon of its own, such as OpenAI's ``ft:gpt-4o-mini:org::id``, is one too when its first part
   is no provider);
4. anything else is refused with :class:`UnknownModelError`, naming what is known and the nearest
   names ("did you mean ...").

Workers build their catalog at start (routes, configured models, providers, families, the names the
price table knows) and publish it in Redis (:mod:`workers.contract.presence`); producers read it
from there. Built from the config file alone (:func:`catalog_from_config`), it has no price table.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

from pydantic import Field

from workers.contract.base import WireModel, base_model_name
from workers.contract.providers import BUILTIN_PROVIDERS, PROVIDER_TYPES, ProviderInfo

__all__ = [
    "DEFAULT_FAMILIES",
    "Judgement",
    "ModelCatalog",
    "ModelFamily",
    "PriceMatch",
    "PriceTable",
    "UnknownModelError",
    "catalog_from_config",
    "close_names",
]


class ModelFamily(WireModel):
    """Bare model names matching ``pattern`` (``fnmatch``, case-insensitive) are ``provider``'s."""

    pattern: str = Field(min_length=1)
    provider: str = Field(min_length=1)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name.lower(), self.pattern.lower())


#: What an OpenAI or Anthropic SDK user types, after the config's own ``[model_families]``.
DEFAULT_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(pattern="gpt-*", provider="openai"),
    ModelFamily(pattern="chatgpt-*", provider="openai"),
    ModelFamily(pattern="o[0-9]*", provider="openai"),
    ModelFamily(pattern="ft:*", provider="openai"),  # fine-tuned: ft:gpt-4o-mini:org::id
    ModelFamily(pattern="claude-*", provider="anthropic"),
)


class PriceMatch(WireModel):
    """One rule of a price table's name matching (genai-prices' clauses, flattened)."""

    kind: Literal["equals", "starts_with", "ends_with", "contains", "regex"]
    text: str

    def matches(self, name: str) -> bool:
        """Whether ``name`` (lowercase) satisfies the rule, as the price table compares."""
        if self.kind == "equals":
            return name == self.text.lower()
        if self.kind == "starts_with":
            return name.startswith(self.text.lower())
        if self.kind == "ends_with":
            return name.endswith(self.text.lower())
        if self.kind == "contains":
            return self.text.lower() in name
        try:
            return re.search(self.text, name) is not None
        except re.error:
            return True  # a rule we cannot read never refuses a name


class PriceTable(WireModel):
    """What a worker's price table knows of one provider: its model names, and the rules by which
    it recognises a name (a dated ``gpt-4o-2024-08-06`` is ``gpt-4o``'s)."""

    names: list[str] = Field(default_factory=list)
    #: A name matching none of these has no price (an ``and`` of rules is kept as its parts: looser).
    matches: list[PriceMatch] = Field(default_factory=list)

    def knows(self, name: str) -> bool:
        low = name.lower()
        undated = _DATE_SUFFIX.sub("", low)  # ``gpt-5.2-20251211``: the table reads compact dates too
        return any(n.lower() in (low, undated) for n in self.names) or any(
            rule.matches(low) or rule.matches(undated) for rule in self.matches
        )


_DATE_SUFFIX = re.compile(r"-\d{4}-?\d{2}-?\d{2}$")


class Judgement(NamedTuple):
    """What a catalog says of one model name."""

    #: Its ``provider:model`` ids (empty when unknown).
    ids: list[str]
    #: Why it is refused, or None.
    error: UnknownModelError | None
    #: ``(id, the priced id it is probably a typo of)`` for each id the workers would refuse unpriced.
    near_misses: list[tuple[str, str]]


class UnknownModelError(ValueError):
    """A model name the catalog cannot resolve; ``suggestions`` are the nearest known names."""

    def __init__(self, message: str, ref: str, suggestions: list[str] | None = None, code: str = "unknown_model"):
        super().__init__(message)
        self.ref = ref
        self.suggestions = suggestions or []
        self.code = code


def close_names(name: str, known: Iterable[str], n: int = 1, cutoff: float = 0.75) -> list[str]:
    """The nearest of ``known`` to ``name`` (a typo's likely intent), best first."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)


def _did_you_mean(suggestions: list[str]) -> str:
    return f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""


class ModelCatalog(WireModel):
    """The model names one worker configuration accepts (see the module docstring)."""

    #: Provider name -> its type (``openai``, ``anthropic``, ``ollama``, or a ``[providers.<name>]``'s type).
    providers: dict[str, str] = Field(default_factory=lambda: dict(BUILTIN_PROVIDERS))
    #: Route alias -> its chain of ``provider:model`` ids.
    routes: dict[str, list[str]] = Field(default_factory=dict)
    #: ``provider:model`` ids the config names (``[models."..."]`` tables and route members).
    models: list[str] = Field(default_factory=list)
    #: Bare-name families, first match wins (the config's, then :data:`DEFAULT_FAMILIES`).
    families: list[ModelFamily] = Field(default_factory=lambda: list(DEFAULT_FAMILIES))
    #: What ``default`` means when no route has that name (``LLMQ_DEFAULT_MODEL``).
    default_model: str = "openai:gpt-4o-mini"
    #: ``[budget] unpriced``: whether a model without a known price is refused.
    unpriced: Literal["reject", "allow_unpriced"] = "reject"
    #: Provider -> what the workers' price table knows of it (a worker's catalog; None: not known here).
    priced: dict[str, PriceTable] | None = None
    #: Providers whose every model has a price (local ones, a ``provider:*`` price in the config).
    free: list[str] = Field(default_factory=list)

    @property
    def aliases(self) -> list[str]:
        """Every route alias a job may name, ``default`` included."""
        return sorted({*self.routes, "default"})

    def digest(self) -> str:
        """A short content hash: equal catalogs (workers with one config) share one Redis key."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    # --- the rule ---------------------------------------------------------------------------------

    def resolve(self, ref: str) -> list[str]:
        """``ref`` as ``provider:model`` ids (a route's whole chain); :class:`UnknownModelError` if unknown."""
        provider, colon, _ = ref.partition(":")
        if colon and provider in self.providers:
            return [ref]
        if ref in self.routes:
            return list(self.routes[ref])
        if ref == "default":
            return [self.default_model]
        family = self.family_of(ref)  # also a name with a colon of its own: ft:gpt-4o-mini:org::id
        if family is None:
            raise self._unknown_provider(ref, provider) if colon else self._unknown_name(ref)
        if family.provider not in self.providers:
            raise self._unknown_provider(f"{family.provider}:{ref}", family.provider)
        return [f"{family.provider}:{ref}"]

    def judge(self, ref: str) -> Judgement:
        """:meth:`resolve`'s answer for ``ref``, and its unpriced near misses."""
        try:
            ids, error = self.resolve(ref), None
        except UnknownModelError as exc:
            ids, error = [], exc
        for model_id in ids:  # a route naming a provider the workers lack (a config the worker refuses)
            provider = model_id.partition(":")[0]
            if provider not in self.providers:
                unknown = self._unknown_provider(model_id, provider)
                return Judgement(
                    [], UnknownModelError(f"route {ref!r}: {unknown}", ref, unknown.suggestions, unknown.code), []
                )
        near = [(model_id, n) for model_id in ids if (n := self.unpriced_near_miss(model_id)) is not None]
        return Judgement(ids, error, near)

    def provider_infos(self) -> dict[str, ProviderInfo]:
        """The providers as the capability table reads them: each name with its type (an entry's
        ``params`` list is not part of the catalog: producers read it from ``llmq:providers``)."""
        return {
            name: ProviderInfo(name=name, type=kind)  # type: ignore[arg-type]
            for name, kind in self.providers.items()
            if kind in PROVIDER_TYPES
        }

    def family_of(self, name: str) -> ModelFamily | None:
        return next((f for f in self.families if f.matches(name)), None)

    def unpriced_near_miss(self, model_id: str) -> str | None:
        """A priced name ``model_id`` is probably a typo of, when the workers would refuse it unpriced.

        Conservative: only when this catalog has the workers' price table, refuses unpriced models,
        the name is neither known nor an extension of a known one (``gpt-4o-2024-08-06``), and a
        known name is close. The worker's own price check stays the judge of everything else.
        """
        if self.priced is None or self.unpriced != "reject":
            return None
        provider, _, name = model_id.partition(":")
        table = self.priced.get(provider)
        if provider in self.free or table is None:
            return None
        base = base_model_name(name)
        if table.knows(base):
            return None
        close = close_names(base.lower(), table.names, cutoff=0.8)
        return f"{provider}:{close[0]}" if close else None

    # --- messages ---------------------------------------------------------------------------------

    def _unknown_provider(self, ref: str, provider: str) -> UnknownModelError:
        name = ref.partition(":")[2]
        guesses = [f"{p}:{name}" for p in close_names(provider, self.providers)]
        known = ", ".join(sorted(self.providers))
        return UnknownModelError(
            f"unknown provider {provider!r} in {ref!r} (the workers have: {known}){_did_you_mean(guesses)}",
            ref,
            guesses,
            code="unknown_provider",
        )

    def _unknown_name(self, ref: str) -> UnknownModelError:
        candidates = {*self.aliases, *(m.partition(":")[2] for m in self.models)}
        for table in (self.priced or {}).values():
            candidates.update(table.names)
        guesses = close_names(ref, candidates)
        families = ", ".join(f"{f.pattern} -> {f.provider}" for f in self.families)
        meant = f" (did you mean {' or '.join(repr(s) for s in guesses)}?)" if guesses else ""
        return UnknownModelError(
            f"unknown model {ref!r}{meant}: not a route alias (known: {', '.join(self.aliases)}), and no model "
            f"family matches it ({families}); write it as provider:model "
            "(e.g. 'openai:gpt-4o') or add a [model_families] pattern to the config",
            ref,
            guesses,
        )

    def unpriced_message(self, model_id: str, suggestion: str) -> str:
        return (
            f"no price known for {model_id}{_did_you_mean([suggestion])} (a model the price table does not "
            f'know needs input_per_mtok/output_per_mtok under [models."{model_id}"] in the workers\' config, '
            'or [budget] unpriced = "allow_unpriced")'
        )

    # --- listing ----------------------------------------------------------------------------------

    def listed_models(self) -> list[tuple[str, str]]:
        """``(id, owner)`` of what a caller may name: route aliases, then configured models."""
        out = [(alias, "llmqueue") for alias in self.aliases]
        out += [(model, model.partition(":")[0]) for model in sorted(set(self.models))]
        return out

    def merged(self, other: ModelCatalog) -> ModelCatalog:
        """What either of two workers accepts (a rolling deploy runs two configs for a while)."""
        families = list(self.families) + [f for f in other.families if f not in self.families]
        priced: dict[str, PriceTable] | None = None
        if self.priced is not None or other.priced is not None:
            priced = dict(self.priced or {})
            for provider, table in (other.priced or {}).items():
                mine = priced.get(provider)
                priced[provider] = (
                    table
                    if mine is None
                    else PriceTable(names=sorted({*mine.names, *table.names}), matches=[*mine.matches, *table.matches])
                )
        return ModelCatalog(
            providers={**other.providers, **self.providers},
            routes={**other.routes, **self.routes},
            models=sorted({*self.models, *other.models}),
            families=families,
            default_model=self.default_model,
            unpriced="reject" if "reject" == self.unpriced == other.unpriced else "allow_unpriced",
            priced=priced,
            free=sorted({*self.free, *other.free}),
        )


def catalog_from_config(data: Mapping[str, Any], *, default_model: str = "openai:gpt-4o-mini") -> ModelCatalog:
    """The catalog of a config file's tables (a parsed TOML document, or a validated config dumped).

    Reads ``[routes]``, the ids of ``[models."..."]``, ``[providers.<name>]`` (name and ``type``),
    ``[model_families]`` and ``[budget] unpriced``; ignores everything else (the worker validates
    the whole file at start).
    """
    routes = {str(k): [str(m) for m in v] for k, v in (data.get("routes") or {}).items() if isinstance(v, list)}
    models = {str(m) for m in (data.get("models") or {}) if ":" in str(m) and not str(m).endswith(":*")}
    for chain in routes.values():
        models.update(chain)
    providers = dict(BUILTIN_PROVIDERS)
    for name, entry in (data.get("providers") or {}).items():
        kind = entry.get("type") if isinstance(entry, Mapping) else None
        providers[str(name)] = str(kind or name)
    families = [ModelFamily(pattern=str(p), provider=str(v)) for p, v in (data.get("model_families") or {}).items()]
    budget = data.get("budget") or {}
    unpriced = budget.get("unpriced", "reject") if isinstance(budget, Mapping) else "reject"
    return ModelCatalog(
        providers=providers,
        routes=routes,
        models=sorted(models),
        families=[*families, *(f for f in DEFAULT_FAMILIES if f not in families)],
        default_model=default_model,
        unpriced="allow_unpriced" if unpriced == "allow_unpriced" else "reject",
    )
