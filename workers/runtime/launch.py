"""``python -m workers.runtime.launch [celery worker options]``: Celery's ``worker`` command alone.

``celery -A app worker`` builds Celery's whole command line first: every subcommand (``amqp`` pulls in
prompt_toolkit and asyncio, the banners pygments) and every installed plugin (Flower, with Tornado),
~290 modules and ~12 MB of every worker process's memory that a worker never runs. This runs the same
``worker`` command object (the same options, parsing and defaults: ``celery.bin.worker``) under a
group that only sets the app, as Celery's own group does for it. ``llmq worker`` execs it.

As ``python -m celery`` does, the pool's patches (gevent) come first, before anything else is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``celery worker`` with ``argv`` (the worker's options, e.g. ``-P gevent -c 200``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    from celery import maybe_patch_concurrency

    maybe_patch_concurrency(["worker", *args])  # gevent's monkey patches, before anything else loads

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


if __name__ == "__main__":
    sys.exit(main())
