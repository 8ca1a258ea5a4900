"""Token pre-counts: exact against OpenAI's cookbook formulas, estimates labelled, offline loading."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import tiktoken

from workers.accounting.tokens import (
    BUNDLED_ENCODINGS,
    TOOL_CALL_OVERHEAD,
    CompactBPE,
    TokenCounter,
    compact_encoding,
    estimate_completion_tokens,
    estimate_usage,
    release_free_heap,
    seed_tiktoken_cache,
    tiktoken_cache_dir,
)
from workers.contract import FunctionCall, Message, Tool, ToolCall
from workers.llm.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[3]


# --- the OpenAI cookbook, verbatim in spirit (How_to_count_tokens_with_tiktoken.ipynb) -------------


def cookbook_messages(messages: list[dict[str, str]], model: str) -> int:
    encoding = tiktoken.encoding_for_model(model)
    tokens_per_message, tokens_per_name = 3, 1
    num_tokens = 0
    for message in messages:
        num_tokens += tokens_per_message
        for key, value in message.items():
            num_tokens += len(encoding.encode(value, disallowed_special=()))  # user text is never special
            if key == "name":
                num_tokens += tokens_per_name
    return num_tokens + 3  # every reply is primed with <|start|>assistant<|message|>


def cookbook_tools(functions: list[dict], messages: list[dict[str, str]], model: str) -> int:
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = 7, 3, 3, -3, 3, 12
    encoding = tiktoken.encoding_for_model(model)
    func_token_count = 0
    if len(functions) > 0:
        for f in functions:
            func_token_count += func_init
            function = f["function"]
            f_desc = function["description"]
            if f_desc.endswith("."):
                f_desc = f_desc[:-1]
            func_token_count += len(encoding.encode(function["name"] + ":" + f_desc))
            if len(function["parameters"]["properties"]) > 0:
                func_token_count += prop_init
                for key in list(function["parameters"]["properties"].keys()):
                    func_token_count += prop_key
                    prop = function["parameters"]["properties"][key]
                    if "enum" in prop:
                        func_token_count += enum_init
                        for item in prop["enum"]:
                            func_token_count += enum_item
                            func_token_count += len(encoding.encode(item))
                    p_desc = prop["description"]
                    if p_desc.endswith("."):
                        p_desc = p_desc[:-1]
                    func_token_count += len(encoding.encode(f"{key}:{prop['type']}:{p_desc}"))
        func_token_count += func_end
    return cookbook_messages(messages, model) + func_token_count


CONVERSATION = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
    {"role": "assistant", "content": "Café, naïve, 東京, emojis 🎉 and numbers 1234567 all count."},
]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}


@pytest.fixture(scope="module", params=[False, True], ids=["tiktoken", "compact"])
def counter(request: pytest.FixtureRequest) -> TokenCounter:
    """tiktoken's counter, and the worker's (``compact=True``: :class:`CompactBPE`)."""
    return TokenCounter(compact=request.param)


def as_messages(raw: list[dict[str, str]]) -> list[Message]:
    return [Message.model_validate(m) for m in raw]


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"])
def test_messages_match_the_cookbook(counter: TokenCounter, model: str) -> None:
    got = counter.count(f"openai:{model}", as_messages(CONVERSATION))
    assert got.tokens == cookbook_messages(CONVERSATION, model)
    assert got.estimated is False
    assert got.encoding == tiktoken.encoding_name_for_model(model)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4"])
def test_tools_match_the_cookbook(counter: TokenCounter, model: str) -> None:
    messages = [{"role": "system", "content": "You answer weather questions."}, {"role": "user", "content": "Paris?"}]
    got = counter.count(f"openai:{model}", as_messages(messages), [Tool.model_validate(WEATHER)])
    assert got.tokens == cookbook_tools([WEATHER], messages, model)


def test_per_message_overhead_is_counted(counter: TokenCounter) -> None:
    one = counter.count("openai:gpt-4o", [Message(role="user", content="hi")]).tokens
    two = counter.count("openai:gpt-4o", [Message(role="user", content="hi")] * 2).tokens
    assert two - one == 3 + 1 + 1  # per-message overhead + role "user" + "hi"


def test_tool_calls_and_results_are_counted(counter: TokenCounter) -> None:
    enc = tiktoken.get_encoding("o200k_base")
    call = ToolCall(id="call_1", function=FunctionCall(name="get_current_weather", arguments='{"location":"Paris"}'))
    assistant = Message(role="assistant", tool_calls=[call])
    result = Message(role="tool", tool_call_id="call_1", content='{"temp": 21}')
    got = counter.count("openai:gpt-4o", [assistant, result]).tokens
    expected = (
        3 + len(enc.encode("assistant")) + TOOL_CALL_OVERHEAD
        + len(enc.encode("get_current_weather")) + len(enc.encode('{"location":"Paris"}'))
        + 3 + len(enc.encode("tool")) + len(enc.encode("call_1")) + len(enc.encode('{"temp": 21}'))
        + 3
    )  # fmt: skip
    assert got == expected


def test_nested_tool_schemas_count_more_never_less(counter: TokenCounter) -> None:
    flat = Tool.model_validate(WEATHER)
    nested = json.loads(json.dumps(WEATHER))
    nested["function"]["parameters"]["properties"]["when"] = {
        "type": "object",
        "description": "Time window.",
        "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
    }
    msgs = [Message(role="user", content="x")]
    flat_n = counter.count("openai:gpt-4o", msgs, [flat]).tokens
    nested_n = counter.count("openai:gpt-4o", msgs, [Tool.model_validate(nested)]).tokens
    assert nested_n > flat_n + len(tiktoken.get_encoding("o200k_base").encode('{"properties":'))


def test_special_token_text_is_ordinary_text(counter: TokenCounter) -> None:
    msgs = [Message(role="user", content="before <|endoftext|> after"), Message(role="user", content="<|endoftext|>")]
    enc = tiktoken.get_encoding("o200k_base")
    got = counter.count("openai:gpt-4o", msgs).tokens
    assert (
        got
        == 3
        + 3
        + 2
        + len(enc.encode_ordinary("before <|endoftext|> after"))
        + len(enc.encode_ordinary("<|endoftext|>"))
        + 3
    )


@pytest.mark.parametrize("model", ["anthropic:claude-sonnet-4-5", "ollama:llama3.1", "openai:my-finetune"])
def test_non_openai_models_are_labelled_estimates_with_margin(counter: TokenCounter, model: str) -> None:
    raw = cookbook_messages(CONVERSATION, "gpt-4")  # gpt-4 is cl100k_base, the estimate encoding
    got = counter.count(model, as_messages(CONVERSATION))
    assert got.estimated is True
    assert got.encoding == "cl100k_base"
    assert got.tokens == math.ceil(raw * 1.1)


def test_margins_are_configurable_per_provider() -> None:
    counter = TokenCounter(safety_margin=1.05, margins={"anthropic": 1.3})
    raw = cookbook_messages(CONVERSATION, "gpt-4")
    assert counter.count("anthropic:claude-haiku-4-5", as_messages(CONVERSATION)).tokens == math.ceil(raw * 1.3)
    assert counter.count("ollama:llama3.1", as_messages(CONVERSATION)).tokens == math.ceil(raw * 1.05)
    with pytest.raises(ConfigurationError):
        TokenCounter(safety_margin=0.9)


@pytest.mark.parametrize("model", ["openai:gpt-4o", "anthropic:claude-sonnet-4-5"])
def test_breakdown_agrees_with_count(counter: TokenCounter, model: str) -> None:
    messages = as_messages(CONVERSATION)
    tools = [Tool.model_validate(WEATHER)]
    breakdown = counter.breakdown(model, messages, tools)
    assert breakdown.total() == counter.count(model, messages, tools).tokens
    assert len(breakdown.per_message) == len(messages)
    assert breakdown.total([0, 3]) == counter.count(model, [messages[0], messages[3]], tools).tokens


def test_completion_estimates(counter: TokenCounter) -> None:
    enc = tiktoken.get_encoding("o200k_base")
    text = "The weather in Paris is mild today."
    assert estimate_completion_tokens(text, "openai:gpt-4o", counter=counter) == len(enc.encode(text))
    cl = tiktoken.get_encoding("cl100k_base")
    assert estimate_completion_tokens(text, "anthropic:claude-sonnet-4-5", counter=counter) == math.ceil(
        len(cl.encode(text)) * 1.1
    )
    call = ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))
    assert estimate_completion_tokens("", "openai:gpt-4o", [call], counter=counter) == TOOL_CALL_OVERHEAD + 2
    prompt = counter.count("openai:gpt-4o", [Message(role="user", content="hi")])
    usage = estimate_usage(prompt, text, "openai:gpt-4o", counter=counter)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (
        prompt.tokens,
        len(enc.encode(text)),
        True,
    )


@pytest.mark.parametrize("compact", [False, True])
def test_encodings_load_once_across_threads(compact: bool) -> None:
    counter = TokenCounter(compact=compact)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(counter.lengths("o200k_base"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in seen}) == 1


# --- offline seeding --------------------------------------------------------------------------------


def cache_name(encoding: str) -> str:
    return hashlib.sha1(
        f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken".encode()
    ).hexdigest()


def test_seed_writes_hash_checked_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tiktoken_cache_dir() == str(tmp_path)
    assert sorted(seed_tiktoken_cache(force=True)) == sorted(BUNDLED_ENCODINGS)
    for name, sha in BUNDLED_ENCODINGS.items():
        assert hashlib.sha256((tmp_path / cache_name(name)).read_bytes()).hexdigest() == sha
    # a corrupt cache file (tiktoken would delete it and go to the network) is rewritten
    (tmp_path / cache_name("cl100k_base")).write_bytes(b"garbage")
    assert seed_tiktoken_cache(force=True) == ["cl100k_base"]
    assert seed_tiktoken_cache(force=True) == []


def test_seed_into_an_unwritable_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ConfigurationError, match="TIKTOKEN_CACHE_DIR"):
        seed_tiktoken_cache(force=True)


def test_seed_respects_a_disabled_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert seed_tiktoken_cache(force=True) == []


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    import tiktoken.load

    def no_network(*args, **kwargs):
        raise RuntimeError("network access attempted")

    tiktoken.load.read_file = no_network          # the only path that downloads BPE files
    socket.socket.connect = no_network            # and belt and braces
    mode = sys.argv[1]
    if mode == "raw":
        import tiktoken
        tiktoken.get_encoding("o200k_base")
    else:
        from workers.contract import Message
        from workers.accounting.tokens import TokenCounter
        counter = TokenCounter()
        counter.preload()
        print(counter.count("openai:gpt-4o", [Message(role="user", content="hello offline world")]).tokens)
        print(counter.count("openai:gpt-4", [Message(role="user", content="hello offline world")]).tokens)
    """
)


def run_offline(mode: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir)}
    env.pop("DATA_GYM_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_encodings_load_with_the_network_path_failing(tmp_path: Path) -> None:
    # Control: with an empty cache and no network, plain tiktoken cannot load the encoding...
    control = run_offline("raw", tmp_path / "empty")
    assert control.returncode != 0 and "network access attempted" in control.stderr
    # ...while the counter seeds a fresh cache from the bundled files and loads both offline.
    fresh = tmp_path / "fresh"
    proc = run_offline("counter", fresh)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["10", "10"]
    assert {p.name for p in fresh.iterdir()} == {cache_name(n) for n in BUNDLED_ENCODINGS}


@pytest.mark.parametrize("poison", [False, True])
def test_long_conversations_count_exactly(counter: TokenCounter, poison: bool) -> None:
    # > 48 strings: the single-call join path; a literal "<|endoftext|>" forces the per-part path
    raw = [
        {"role": "user" if i % 2 else "assistant", "content": f"turn {i}: naïve café 東京 {i * 7919}"}
        for i in range(80)
    ]
    if poison:
        raw[40]["content"] = "look: <|endoftext|> is just text here"
    assert counter.count("openai:gpt-4o", as_messages(raw)).tokens == cookbook_messages(raw, "gpt-4o")


@pytest.mark.parametrize("name", BUNDLED_ENCODINGS)
def test_a_compacted_encoding_encodes_exactly_as_a_full_one(name: str) -> None:
    """The worker drops each encoding's Python copy of its merge ranks (~29 MB for o200k_base):
    two separate instances, one compacted, give the same tokens for ordinary, special, non-Latin
    and adversarial text."""
    from tiktoken_ext import openai_public

    seed_tiktoken_cache()
    full = tiktoken.Encoding(**getattr(openai_public, name)())
    compacted = tiktoken.Encoding(**getattr(openai_public, name)())
    compact_encoding(compacted)
    release_free_heap()
    assert compacted._mergeable_ranks == {} and len(full._mergeable_ranks) > 90_000
    samples = [
        "hello offline world",
        "Ünïcödé — 中文字符 — русский — emoji 🎉🎉 — \t\n  spaces   ",
        "<|endoftext|> is special",
        " " * 5000,
        "a" * 3000 + "\u0000" + json.dumps({"tool": [1, 2.5, None]}),
    ]
    for text in samples:
        assert compacted.encode(text, allowed_special="all") == full.encode(text, allowed_special="all")
        assert compacted.encode_ordinary(text) == full.encode_ordinary(text)
    assert compacted.decode(full.encode("round trip ✓")) == "round trip ✓"


def test_a_counter_loads_each_encoding_on_first_use_and_only_what_its_models_need() -> None:
    """The worker preloads only its default model's encoding (``encodings_for``); any other loads on
    the first count that needs it, as a :class:`CompactBPE`, and counts as tiktoken does."""
    counter = TokenCounter(compact=True)
    assert counter.loaded == ()
    assert counter.encodings_for(["openai:gpt-4o-mini", "openai:gpt-4o"]) == ["o200k_base"]
    assert counter.encodings_for(["anthropic:claude-sonnet-4-5", "openai:gpt-4"]) == ["cl100k_base"]
    assert counter.loaded == ()  # naming them loads nothing
    counter.preload(counter.encodings_for(["openai:gpt-4o-mini"]))
    assert counter.loaded == ("o200k_base",)
    assert isinstance(counter.lengths("o200k_base"), CompactBPE)  # not tiktoken's tokenizer
    raw = [{"role": "user", "content": "naïve café 東京 <|endoftext|> " * 20}]
    full = TokenCounter()
    assert counter.count("openai:gpt-4o-mini", as_messages(raw)) == full.count("openai:gpt-4o-mini", as_messages(raw))
    assert counter.loaded == ("o200k_base",)
    estimate = counter.count("anthropic:claude-sonnet-4-5", as_messages(raw))  # first use: loads it now
    assert counter.loaded == ("o200k_base", "cl100k_base")
    assert estimate == full.count("anthropic:claude-sonnet-4-5", as_messages(raw)) and estimate.estimated
