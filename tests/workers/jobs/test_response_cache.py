"""The response cache's key and its Redis side (entries, size bound, leads, purge) against a real Redis."""

from __future__ import annotations

import redis

from workers.contract import CacheSpec, CompletionJob, CompletionResult, Message
from workers.jobs.cachekey import cache_key, cache_spec
from workers.jobs.responsecache import CacheStats, ResponseCache
from workers.routes import LLMQConfig

MESSAGES = [Message(role="user", content="hi")]


def _job(**extra: object) -> CompletionJob:
    return CompletionJob.model_validate({"model": "cheap", "messages": [{"role": "user", "content": "hi"}], **extra})


def _key(job: CompletionJob, chain: tuple[str, ...] = ("openai:gpt-4o-mini",)) -> str:
    spec = job.cache or CacheSpec()
    return cache_key(job, spec, list(chain), MESSAGES).member


def test_the_key_is_the_request_after_resolution_and_nothing_else() -> None:
    base = _job(cache={"ttl_s": 60})
    same = [
        _job(cache={"ttl_s": 999}, id="other-id", stream=False, metadata={"a": "b"}, tags=["x"], user="u"),
        _job(model="openai:gpt-4o-mini", cache={"ttl_s": 60}),  # the alias resolved the same way
    ]
    assert {_key(j) for j in same} == {_key(base)}
    different = [
        _job(cache={"ttl_s": 60}, max_tokens=5),
        _job(cache={"ttl_s": 60}, temperature=0),
        _job(cache={"ttl_s": 60}, response_format={"type": "json_object"}),
        _job(cache={"ttl_s": 60}, tenant="other"),
        _job(cache={"ttl_s": 60}, tools=["get_weather"]),
    ]
    keys = {_key(j) for j in different} | {_key(base, ("openai:gpt-4o",))}
    assert len(keys) == len(different) + 1 and _key(base) not in keys
    glob = _job(cache={"ttl_s": 60, "scope": "global"})
    assert _key(glob).startswith("g:") and _key(glob) == _key(_job(cache={"scope": "global"}, tenant="b"))
    assert _key(base).startswith("t:default:")


def test_what_changes_the_price_or_the_delivery_but_not_the_answer_shares_the_entry() -> None:
    """Scheduling, delivery and prompt-cache hints are not the request: the same question asked at
    another priority, with a webhook, as a batch line, with ``cache_control`` breakpoints or
    ``prompt_cache: "auto"``, is the same entry; a ``logit_bias`` in another key order too."""
    base = _job(cache={"ttl_s": 60}, logit_bias={"50256": -100, "13": 5})
    marked = [Message(role="user", content=[{"type": "text", "text": "hi", "cache_control": {"ttl": "1h"}}])]
    same = [
        _job(cache={"ttl_s": 60}, logit_bias={"13": 5, "50256": -100}),
        _job(cache={"ttl_s": 60}, logit_bias={"13": 5, "50256": -100}, priority="bulk", concurrency_key="doc-1",
             webhook="https://example.com/hook", batch="allow", replay_of="job_1", prompt_cache="auto",
             prompt_cache_key="faq"),
    ]  # fmt: skip
    assert {_key(j) for j in same} == {_key(base)}
    spec = CacheSpec()
    plain = [Message(role="user", content=[{"type": "text", "text": "hi"}])]
    assert cache_key(base, spec, ["m"], marked).member == cache_key(base, spec, ["m"], plain).member
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    with_mark = _job(cache={"ttl_s": 60}, tools=[{**tool, "cache_control": {}}])
    assert _key(with_mark) == _key(_job(cache={"ttl_s": 60}, tools=[tool]))
    assert _key(_job(cache={"ttl_s": 60}, logit_bias={"13": 4, "50256": -100})) != _key(base)


def test_who_is_cached() -> None:
    config = LLMQConfig.model_validate(
        {"routes": {"cheap": ["openai:gpt-4o-mini"]}, "cache": {"routes": {"cheap": {"ttl_s": 5}}}}
    )
    assert cache_spec(_job(), config) == CacheSpec(ttl_s=5)  # the route's
    assert cache_spec(_job(model="openai:gpt-4o-mini"), config) is None
    assert cache_spec(_job(cache={"ttl_s": 9}), config) == CacheSpec(ttl_s=9)  # the job's own wins
    assert cache_spec(_job(temperature=0.5), config) is None  # sampled: only when asked
    assert cache_spec(_job(top_p=0.5, cache={"sampled": True}), config) is not None
    assert cache_spec(_job(temperature=0), config) is not None


def _result(job_id: str, text: str) -> CompletionResult:
    return CompletionResult(id=job_id, status="succeeded", content=text, cost_usd=0.01)


def test_leads_hits_and_take_overs(redis_client: redis.Redis) -> None:
    cache = ResponseCache(redis_client)
    key = cache_key(_job(), CacheSpec(ttl_s=60), ["openai:gpt-4o-mini"], MESSAGES)
    assert cache.begin(key, "job-a").kind == "lead"
    assert cache.begin(key, "job-a").kind == "lead"  # a redelivered leader still leads
    follow = cache.begin(key, "job-b")
    assert (follow.kind, follow.leader) == ("follow", "job-a")
    assert cache.begin(key, "job-c", taking_over="job-x").leader == "job-a"  # not the leader it saw
    assert cache.begin(key, "job-b", taking_over="job-a").kind == "lead"  # job-a failed: job-b leads
    assert cache.begin(key, "job-c", taking_over="job-a").leader == "job-b"  # only one takes over
    cache.release(key, "job-a")  # no longer job-a's lead: nothing happens
    assert cache.begin(key, "job-c").leader == "job-b"
    assert cache.put(key, _result("job-b", "answer")) and cache.stats().entries == 1
    hit = cache.begin(key, "job-d")
    assert hit.kind == "hit" and hit.hit is not None and hit.hit.content == "answer"
    assert not redis_client.exists(f"llmq:{{cache}}:lead:{key.member}")


def test_the_size_bound_evicts_what_expires_first_and_purge_by_tenant(redis_client: redis.Redis) -> None:
    one = len(_result("j", "x" * 1000).model_dump_json())
    cache = ResponseCache(redis_client, max_bytes=int(one * 3.5), max_entry_bytes=one * 2)
    keys = []
    for i, ttl in enumerate((100, 50, 300, 200)):  # four entries pass 3.5 x: the one expiring first goes
        job = _job(tenant=f"t{i % 2}", max_tokens=10 + i)
        key = cache_key(job, CacheSpec(ttl_s=ttl), ["openai:gpt-4o-mini"], MESSAGES)
        keys.append(key)
        assert cache.begin(key, f"job-{i}").kind == "lead"
        assert cache.put(key, _result(f"job-{i}", "x" * 1000))
    assert cache.stats().entries == 4  # over the bound until the next lookup keeps it
    assert [cache.begin(k, "probe").kind for k in keys] == ["hit", "lead", "hit", "hit"]  # ttl 50 went
    assert cache.stats().entries == 3 and cache.stats().bytes <= cache.max_bytes
    assert not cache.put(keys[1], _result("job-1", "x" * 3 * one))  # over max_entry_bytes
    assert cache.stats().entries == 3
    assert cache.purge("t0") == 2 and cache.stats().entries == 1  # entries 0 and 2 were t0's
    assert cache.purge() == 1 and cache.stats() == type(cache.stats())(0, 0)


def test_the_lookup_sent_with_the_claim_survives_a_script_flush_and_claims_once(redis_client: redis.Redis) -> None:
    """``JobStore.claim_with`` sends the claim and the lookup in one write; after Redis lost its
    scripts (a restart, SCRIPT FLUSH) each is loaded and sent again alone: the job's run is 1, not 2."""
    from workers.contract import JobKeys
    from workers.jobs.store import JobStore

    store = JobStore(redis_client, result_ttl_s=60, claim_lease_s=30)
    cache = ResponseCache(redis_client)
    key = cache_key(_job(), CacheSpec(ttl_s=60), ["openai:gpt-4o-mini"], MESSAGES)
    for job_id, flush in (("job-flush-a", False), ("job-flush-b", True), ("job-flush-c", True)):
        if flush:
            redis_client.script_flush()
        claim, reply = store.claim_with(JobKeys(job_id), f"tok-{job_id}", *cache.begin_call(key, job_id))
        assert claim.run == 1
        begun = cache.parse_begin(reply)
        assert (begun.kind, begun.leader) == (("lead", None) if job_id == "job-flush-a" else ("follow", "job-flush-a"))
    claim, _ = store.claim_with(JobKeys("job-flush-a"), "someone-else", *cache.begin_call(key, "job-flush-z"))
    assert claim.run == -1  # busy: held by another token
    # the claim script alone missing (the lookup's was loaded by the call above): the claim is sent again alone
    redis_client.script_flush()
    cache.begin(key, "job-flush-y")  # loads the lookup's script only
    claim, reply = store.claim_with(JobKeys("job-flush-d"), "tok-d", *cache.begin_call(key, "job-flush-d"))
    assert claim.run == 1 and cache.parse_begin(reply).leader == "job-flush-a"


def test_an_answer_stored_twice_under_one_key_leaves_no_bytes_behind(redis_client: redis.Redis) -> None:
    """Two leaders of one key can both store (a follower took over from a leader whose job was
    claimed again meanwhile): once the entry goes, the total is what is still listed."""
    cache = ResponseCache(redis_client)
    spec, chain = CacheSpec(ttl_s=60), ["openai:gpt-4o-mini"]
    other = cache_key(_job(tenant="keep"), spec, chain, MESSAGES)
    key = cache_key(_job(), spec, chain, MESSAGES)
    assert cache.put(other, _result("job-o", "kept"))
    kept = cache.stats().bytes
    assert cache.put(key, _result("job-a", "first")) and cache.put(key, _result("job-b", "second"))
    assert cache.purge("default") == 1
    assert cache.stats() == CacheStats(bytes=kept, entries=1)
