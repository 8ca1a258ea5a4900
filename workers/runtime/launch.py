"""``python -m workers.runtime.launch [celery worker options]``: Celery's ``worker`` command alone.

``celery -A app worker`` builds Celery's whole command line first: every subcommand (``amqp`` pulls in
prompt_toolkit and asyncio, the banners pygments) and every installed plugin (Flower, with Tornado),
~290 modules and ~12 MB of every worker process's memory that a worker never runs. This runs the same
``worker`` command object (the same options, parsing and defaults: ``celery.bin.worker``) under a
group that only sets the app, as Celery's own group does for it. ``llmq worker`` execs it.

As ``python -m celery`` does, the pool's patches (gevent) come first, before anything else is imported.
Then, before Celery and the worker's modules, the encodings ``llmq worker`` named in
``LLMQ_PRELOAD_ENCODINGS`` (:func:`default_encodings`, worked out before its exec): loading one holds
its Python merge ranks beside its Rust tokenizer for a moment (~73 MB for o200k_base), which on top
of the worker's ~105 MB of imports was the process's peak (``workers/accounting/bpefiles.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``celery worker`` with ``argv`` (the worker's options, e.g. ``-P gevent -c 200``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    from celery import maybe_patch_concurrency

    maybe_patch_concurrency(["worker", *args])  # gevent's monkey patches, before anything else loads
    from workers.accounting.bpefiles import preload_compacted

    preload_compacted()  # while the process is small: the moment both copies of the ranks exist is its peak
    import_without_optional()

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


#: Optional imports the worker never uses, hidden while the library that makes them is imported:
#: httpcore2 imports trio whenever it is installed (a development install has it, for selenium), for
#: async clients under trio (~4 MB, ~90 modules); redis-py imports the OpenTelemetry metrics SDK when
#: installed, for its own metrics, which an application turns on in code and llmqueue never does
#: (~3 MB). Both libraries treat them as optional; the worker's HTTP client is synchronous (gevent).
WITHOUT_OPTIONAL = (("httpcore2", "trio"), ("redis", "opentelemetry.sdk.metrics"))


def import_without_optional() -> None:
    """Import each library of :data:`WITHOUT_OPTIONAL` with its optional import hidden (``import``
    raises ImportError). The hidden modules stay importable afterwards (a tool module may use trio);
    only the library's optional support is left out of the worker process. Nothing is done for a
    library imported already."""
    for library, optional in WITHOUT_OPTIONAL:
        if library in sys.modules or optional in sys.modules:
            continue
        sys.modules[optional] = None  # type: ignore[assignment]
        try:
            importlib.import_module(library)
        finally:
            del sys.modules[optional]


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


if __name__ == "__main__":
    sys.exit(main())
