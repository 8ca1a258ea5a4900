"""``llmq worker``'s options: Celery's short spellings are accepted, and the command it runs says so."""

from __future__ import annotations

import argparse

import pytest

from llmq.commands import worker


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    worker.register(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


@pytest.mark.parametrize(
    ("argv", "pool", "concurrency", "queue"),
    [
        (("-P", "gevent", "-c", "8", "-Q", "bulk"), "gevent", 8, "bulk"),
        (("--pool", "threads", "--concurrency", "3"), "threads", 3, None),
    ],
)
def test_celery_spellings_and_long_options_build_the_same_command(
    argv: tuple[str, ...], pool: str, concurrency: int, queue: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMQ_QUEUE", raising=False)
    monkeypatch.delenv("LLMQ_BROKER_URL", raising=False)  # (on RabbitMQ, -Q names the class queues)
    args = _parse(*argv)
    assert (args.pool, args.concurrency) == (pool, concurrency)
    line = worker.command(args)
    # threads is ours (Celery's "custom" pool); gevent is Celery's own
    assert line[line.index("-P") + 1] == ("custom" if pool == "threads" else "gevent")
    assert line[line.index("-c") + 1] == str(concurrency)
    assert line[line.index("-Q") + 1] == (queue or "llmq")


def test_an_unknown_pool_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        _parse("-P", "prefork")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'prefork'" in err and "gevent" in err and "threads" in err
