"""The browser job view in real headless Chromium: login, the job list with filters, queue and budget
panels, one job's deltas arriving live, no message text, and another tenant's jobs hidden.

Gateway (real uvicorn) -> Redis -> in-process worker -> simulator (paced, so a stream lasts seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import redis

from producers import Client
from producers.gateway import GatewaySettings, create_gateway
from producers.gateway.server import GatewayThread
from producers.gateway.state import Panels
from simulator.app import SimulatorThread
from tests.support.browser import chromium, screenshot
from tests.support.waits import until as _until
from workers.accounting.ledger import Ledger

TOKEN_A = "tok-a-ui-3c9e51"
TOKEN_B = "tok-b-ui-77a0d2"
TOKENS = {TOKEN_A: "team-a", TOKEN_B: "team-b"}
JOB = {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _panels(redis_url: str) -> Panels:
    ledger = Ledger(redis.Redis.from_url(redis_url), monthly_limit_usd=50.0, tenant_limits_usd={"team-a": 5.0})

    async def budget(tenant: str) -> dict[str, Any] | None:
        return (await asyncio.to_thread(ledger.show)).model_dump(mode="json")

    return Panels(budget=budget)


@pytest.fixture
def gw(redis_url: str) -> Iterator[GatewayThread]:
    settings = GatewaySettings(redis_url=redis_url, tokens=TOKENS)
    with GatewayThread(create_gateway(settings, panels=_panels(redis_url))) as server:
        yield server


def _submit(gw: GatewayThread, token: str, **extra: object) -> str:
    with httpx2.Client(base_url=gw.url, headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
        response = http.post("/v1/jobs", json={**JOB, **extra})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def until(predicate: Any, what: str, guard_s: float) -> Any:
    """Wait on the page; an element replaced while it was read (a re-render) counts as "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return _until(predicate, what, guard_s, tolerate=(StaleElementReferenceException, NoSuchElementException))


def _text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def _rows(driver: Any, table_id: str) -> list[str]:
    return [r.text for r in driver.find_elements("css selector", f"#{table_id} tbody tr")]


def test_job_list_live_job_and_tenant_isolation(
    worker, client: Client, gw: GatewayThread, simulator: SimulatorThread
) -> None:
    ok = [_submit(gw, TOKEN_A) for _ in range(2)]
    failed = _submit(gw, TOKEN_A, model="openai:gpt-4o-mini~400*")
    other = _submit(gw, TOKEN_B)
    for job_id in [*ok, failed, other]:
        client.result(job_id, timeout=60)

    with chromium() as driver:
        driver.get(f"{gw.url}/ui")
        until(lambda: driver.find_element("id", "login").is_displayed(), "the login form", 30)
        screenshot(driver, "ui-login")
        driver.find_element("id", "token").send_keys(TOKEN_A)
        driver.find_element("css selector", "#login-form button").click()

        # the list: team-a's three jobs, never team-b's; the queue and budget panels
        until(lambda: len(_rows(driver, "jobs-table")) == 3, "team-a's jobs listed", 30)
        listed = {r.get_attribute("data-id") for r in driver.find_elements("css selector", "#jobs-table tbody tr")}
        assert listed == {*ok, failed} and other not in driver.page_source
        until(lambda: _text(driver, "who") == "tenant team-a", "the tenant's name", 30)
        # the panels load one after the other and are redrawn every 5 s: waited for, not read once
        until(lambda: any(r.startswith("llmq") for r in _rows(driver, "queues-table")), "the queue row", 30)
        budget = until(lambda: _rows(driver, "budget-table"), "the budget rows", 30)
        assert [r.split()[0] for r in budget] == ["global", "tenant:team-a"], budget
        screenshot(driver, "ui-list")

        driver.find_element("id", "f-status").send_keys("failed")
        driver.find_element("css selector", "#filters button").click()
        until(lambda: len(_rows(driver, "jobs-table")) == 1, "the failed job alone", 30)
        assert driver.find_element("css selector", "#jobs-table tbody tr").get_attribute("data-id") == failed
        screenshot(driver, "ui-list-failed")

        # one job live: the deltas arrive while the job runs (2 tokens/s: the stream lasts 20 s)
        simulator.simulator.config.tokens_per_s = 2.0
        simulator.simulator.config.completion_tokens = 40
        live = _submit(gw, TOKEN_A)
        driver.get(f"{gw.url}/ui#/job/{live}")
        until(lambda: int(_text(driver, "delta-count") or 0) >= 1, "the first delta", 60)
        seen_running = int(_text(driver, "delta-count"))
        assert _text(driver, "live-state") == "live"
        assert client.status(live)["state"] == "running"  # type: ignore[index]
        screenshot(driver, "ui-job-live")
        until(lambda: _text(driver, "live-state") == "ended", "the job's end", 60)
        final = int(_text(driver, "delta-count"))
        assert final > seen_running
        events = [e.get_attribute("data-type") for e in driver.find_elements("css selector", "#events li")]
        assert events[0] == "start" and events[-1] == "done" and events.count("delta") == final
        until(lambda: _text(driver, "job-status") == "succeeded", "the job's status", 30)
        content = client.result(live, timeout=10).content
        assert content and content not in driver.page_source  # no message text without LLMQ_UI_CONTENT=1
        assert "(text hidden)" in driver.page_source
        assert len(_rows(driver, "attempts-table")) == 1 and "cost" in _text(driver, "job-facts")
        screenshot(driver, "ui-job-ended")

        # another tenant's job, opened by id, is not found
        driver.get(f"{gw.url}/ui#/job/{other}")
        driver.refresh()
        until(lambda: driver.find_element("id", "job-missing").is_displayed(), "the not-found note", 30)
        screenshot(driver, "ui-other-tenant")

        # a failed job offers a replay, linked to its copy
        driver.get(f"{gw.url}/ui#/job/{failed}")
        driver.refresh()
        until(lambda: driver.find_element("id", "replay").is_displayed(), "the replay button", 30)
        driver.find_element("id", "replay").click()
        until(lambda: "submitted" in _text(driver, "replay-result"), "the replay's copy", 30)
        screenshot(driver, "ui-replayed")


def test_content_is_shown_only_when_enabled(worker, client: Client, redis_url: str, simulator: SimulatorThread) -> None:
    settings = GatewaySettings(redis_url=redis_url, tokens=TOKENS, ui_content=True)
    with GatewayThread(create_gateway(settings)) as gw, chromium() as driver:
        job_id = _submit(gw, TOKEN_A)
        content = client.result(job_id, timeout=60).content
        driver.get(f"{gw.url}/ui")
        driver.find_element("id", "token").send_keys(TOKEN_A)
        driver.find_element("css selector", "#login-form button").click()
        until(lambda: len(_rows(driver, "jobs-table")) == 1, "the job listed", 30)
        until(lambda: driver.find_element("id", "budget-none").is_displayed(), "no budget source: said so", 30)
        driver.get(f"{gw.url}/ui#/job/{job_id}")
        driver.refresh()
        until(lambda: _text(driver, "answer") == content, "the answer's text", 30)
        screenshot(driver, "ui-job-content")


def test_an_answer_that_starts_over_replaces_the_text_shown(redis_url: str) -> None:
    """A job whose first worker died mid-answer (run 2 answers from the start) and whose answer was
    repaired once: the page shows the current answer, not the runs' texts run together, and its event
    list marks both restarts. The events are the worker's own publisher's, on the gateway's job."""
    from workers.contract import CompletionResult, DoneEvent, JobKeys, StartEvent
    from workers.contract.events import RepairEvent
    from workers.jobs.events import EventPublisher, last_seq

    settings = GatewaySettings(redis_url=redis_url, tokens=TOKENS, ui_content=True)
    with GatewayThread(create_gateway(settings)) as gw, chromium() as driver:
        job_id = _submit(gw, TOKEN_A)  # queued: no worker runs it here, the events below are its runs'
        rds = redis.Redis.from_url(redis_url)
        keys = JobKeys(job_id)
        first = EventPublisher(rds, keys, run=1, start_seq=-1, coalesce_s=0)
        first.emit(StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"))
        for text in ("Once ", "upon"):
            first.delta(text)
        second = EventPublisher(rds, keys, run=2, start_seq=last_seq(rds, keys), coalesce_s=0)
        second.emit(StartEvent(job_id=job_id, seq=0, model="openai:gpt-4o-mini"))
        second.delta("{bad")
        second.emit(RepairEvent(job_id=job_id, seq=0, attempt=1, errors=["not JSON"]))
        second.delta('{"ok": true}')
        second.emit(DoneEvent(job_id=job_id, seq=0, result=CompletionResult(id=job_id, status="succeeded")))
        rds.close()

        driver.get(f"{gw.url}/ui")
        driver.find_element("id", "token").send_keys(TOKEN_A)
        driver.find_element("css selector", "#login-form button").click()
        until(lambda: _text(driver, "who") == "tenant team-a", "the login", 30)
        driver.get(f"{gw.url}/ui#/job/{job_id}")
        driver.refresh()
        until(lambda: _text(driver, "live-state") == "ended", "the stream followed to its end", 30)
        assert _text(driver, "answer") == '{"ok": true}'
        marked = driver.find_elements("css selector", "#events li[data-restart]")
        assert [item.text for item in marked] == [
            "#3 start openai:gpt-4o-mini (run 2: its worker was lost; the answer starts over)",
            "#5 repair (the answer failed its format: it starts over)",
        ]
        screenshot(driver, "ui-job-restarts")
