"""``python -m workers.runtime.launch [celery worker options]``: Celery's ``worker`` command alone.

``celery -A app worker`` builds Celery's whole command line first: every subcommand (``amqp`` pulls in
prompt_toolkit and asyncio, the banners pygments) and every installed plugin (Flower, with Tornado),
~290 modules and ~12 MB of every worker process's memory that a worker never runs. This runs the same
``worker`` command object (the same options, parsing and defaults: ``celery.bin.worker``) under a
group that only sets the app, as Celery's own group does for it. ``llmq worker`` execs it.

As ``python -m celery`` does, the pool's patches (gevent) come first, before anything else is imported;
before them, gevent's greenlet tree tracking is turned off (:data:`GEVENT_DEFAULTS`).
Then, before Celery and the worker's modules, the encodings ``llmq worker`` named in
``LLMQ_PRELOAD_ENCODINGS`` (:func:`default_encodings`, worked out before its exec): the first process
on a host builds each one's compact table from the bundled file, holding ~45 MB for a moment, which
on top of the worker's imports would be the process's peak (``workers/accounting/bpefiles.py``); later
ones map the cached table (~7 MB for o200k_base).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``celery worker`` with ``argv`` (the worker's options, e.g. ``-P gevent -c 200``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for name, value in GEVENT_DEFAULTS.items():
        os.environ.setdefault(name, value)  # read when gevent is first imported (its patches, next)
    with without_optional():
        from celery import maybe_patch_concurrency

        maybe_patch_concurrency(["worker", *args])  # gevent's monkey patches, before anything else loads
        from workers.accounting.compactbpe import preload_compacted

        preload_compacted()  # while the process is small: building a table (first on a host) is its peak
        for library in IMPORTED_EARLY:
            importlib.import_module(library)
        import click
        from celery.bin.base import CLIContext
        from celery.bin.worker import worker

        from workers.runtime.app import app

    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = CLIContext(app=app, no_color=False, workdir=None, quiet=False)

    group.add_command(worker)
    group.main(args=["worker", *args], prog_name="llmq", auto_envvar_prefix="CELERY")  # exits with the worker
    return 0


#: gevent's settings for the worker, unless the environment sets them. ``track_greenlet_tree`` (on by
#: default) has every greenlet record the greenlet that spawned it, a share of its spawn-tree locals
#: and a copy of the spawning stack (each frame's code and line): debugging aids (``gevent.util``'s
#: run info) the worker never reads, kept per job greenlet and made on every spawn.
GEVENT_DEFAULTS = {"GEVENT_TRACK_GREENLET_TREE": "false"}
#: Optional imports the worker never uses, hidden while the worker's libraries are imported (each
#: library treats them as optional, and goes on without): trio, which httpcore2 imports whenever it
#: is installed (a development install has it, for selenium) for async clients under trio (~4 MB,
#: ~90 modules; the worker's HTTP client is synchronous); the OpenTelemetry metrics SDK, which redis-py
#: imports for its own metrics, turned on in an application's code, never in llmqueue's (~3 MB);
#: pygments (Celery's colours for its other commands' output), PyYAML (kombu's yaml serializer: the
#: worker accepts JSON only) and psutil (Celery's ``memdump`` debugging command), ~1 MB each.
OPTIONAL_UNUSED = ("trio", "opentelemetry.sdk.metrics", "pygments", "yaml", "psutil")
#: Libraries that make those imports but would load only with the worker's resources: imported early,
#: inside :func:`without_optional`.
IMPORTED_EARLY = ("httpcore2", "redis", "celery.apps.worker")


@contextlib.contextmanager
def without_optional(names: Sequence[str] = OPTIONAL_UNUSED) -> Iterator[None]:
    """Within: ``import`` of each of ``names`` not imported yet raises ImportError. Afterwards they
    are importable again (a tool module may use trio or PyYAML); only the optional support of the
    libraries imported within is left out of the worker process."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def default_encodings() -> list[str]:
    """The encodings the worker's default model counts with (``LLMQ_DEFAULT_MODEL``, a route of the
    config file or an id), as its resources will preload them (``workers/runtime/resources.py``).

    ``llmq worker`` calls this before it execs the worker, so the settings, the config and pydantic
    it imports stay behind; any error is left to the worker's start to report (it returns nothing)."""
    from workers.accounting.tokens import TokenCounter
    from workers.contract.catalog import UnknownModelError, catalog_from_config
    from workers.routes import load_config
    from workers.settings import get_settings

    with contextlib.suppress(Exception):
        settings = get_settings()
        config = load_config(settings.config)
        catalog = catalog_from_config(config.model_dump(), default_model=settings.default_model)
        counter = TokenCounter(types={name: spec.type for name, spec in config.providers.items()})
        with contextlib.suppress(UnknownModelError):
            return counter.encodings_for(catalog.resolve(settings.default_model))
    return []


def default_prices() -> str:
    """genai-prices' answers to what the worker's start and its default model's jobs ask of it, as
    JSON for ``LLMQ_PRELOAD_PRICES`` (``workers/accounting/pricehandover.py``): the prices of the
    default model (as named and as resolved), of every route's models and of the configured models,
    and the tables of names of the built-in and configured providers (the catalog the worker builds
    and publishes at start holds them).

    ``llmq worker`` calls this before it execs the worker, so genai-prices' data (~7 MB) stays behind
    with the rest; any error is left to the worker's start to report (it returns "")."""
    from workers.accounting.pricehandover import handover
    from workers.accounting.prices import price_sources
    from workers.contract.catalog import UnknownModelError, catalog_from_config
    from workers.contract.providers import BUILTIN_PROVIDERS
    from workers.routes import load_config
    from workers.settings import get_settings

    with contextlib.suppress(Exception):
        settings = get_settings()
        config = load_config(settings.config)
        catalog = catalog_from_config(config.model_dump(), default_model=settings.default_model)
        models = [settings.default_model]
        with contextlib.suppress(UnknownModelError):
            models += catalog.resolve(settings.default_model)
        models += [model for chain in config.routes.values() for model in chain]
        models += [model for model in config.models if not model.endswith(":*")]
        return handover(
            config.models,
            unpriced=config.budget.unpriced,
            sources=price_sources(config.providers),
            models=dict.fromkeys(models),
            providers=dict.fromkeys([*BUILTIN_PROVIDERS, *config.providers]),
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
