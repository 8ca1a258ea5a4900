"""The prompt sandbox: what templates may do, and the attacks it refuses or caps."""

from __future__ import annotations

import tracemalloc

import pytest

from workers.prompts.sandbox import MAX_ITERATIONS, PromptSandbox, RenderLimitError, SandboxError

CAP = 10_000


@pytest.fixture
def sandbox() -> PromptSandbox:
    return PromptSandbox(max_chars=CAP)


def render(sandbox: PromptSandbox, source: str, **variables: object) -> str:
    return sandbox.render([sandbox.compile(source)], variables)[0]


def test_ordinary_templates_render(sandbox: PromptSandbox) -> None:
    source = (
        "Hi {{ name|title }}. {{ items|join(', ') }}; {{ n + 1 }} {{ text.strip().upper() }}"
        "{% for x in items %}[{{ loop.index }}]{% endfor %}{{ ' (vip)' if vip }}"
    )
    out = render(sandbox, source, name="ada lovelace", items=["a", "b"], n=2, text=" ok ", vip=True)
    assert out == "Hi Ada Lovelace. a, b; 3 OK[1][2] (vip)"


def test_missing_variable_is_an_error_not_an_empty_string(sandbox: PromptSandbox) -> None:
    with pytest.raises(SandboxError, match="'name' is undefined"):
        render(sandbox, "Hello {{ name }}")
    assert render(sandbox, "{{ 'yes' if name is defined else 'no' }}") == "no"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ ''|attr('__class__') }}",
        "{{ (''|attr('__class__')).__mro__ }}",
        "{{ items.append(1) }}",
        "{{ d.update(a=1) }}",
    ],
)
def test_sandbox_escapes_are_refused(sandbox: PromptSandbox, source: str) -> None:
    with pytest.raises(SandboxError):
        render(sandbox, source, x="s", items=[], d={})


@pytest.mark.parametrize(
    "source",
    [
        "{{ '{:>300000000}'.format(x) }}",  # the padding attack, inside Jinja
        "{{ '{0:>300000000}'.format_map({'0': x}) }}",
        "{{ '%300000000s' % x }}",
        "{{ x|format }}",
        "{{ x.ljust(300000000) }}",
        "{{ x.center(300000000) }}",
        "{{ x.zfill(300000000) }}",
        "{{ x|center(300000000) }}",
    ],
)
def test_format_specs_and_padding_are_refused(sandbox: PromptSandbox, source: str) -> None:
    with pytest.raises(SandboxError):
        render(sandbox, source, x="1")


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 300000000 }}",
        "{{ [1] * 300000000 }}",
        "{{ x * 300000000 }}",
        "{{ 2 ** 300000000 }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        "{{ (x * 9000)|replace('a', 'bbbbbbbbbb') }}",
        "{{ range(90000)|join('xxxxxxxxxx') }}",
        "{{ x|indent(300000000) }}",
    ],
)
def test_values_past_the_cap_are_refused_before_they_are_built(sandbox: PromptSandbox, source: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(SandboxError):
            render(sandbox, source, x="a")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # nothing near the 300 MB the expression asks for was allocated


def test_a_loop_rendering_megabytes_is_capped(sandbox: PromptSandbox) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(RenderLimitError, match="over the cap of 10,000"):
            render(sandbox, "{% for i in range(100000) %}{{ x }}{% endfor %}", x="y" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_nested_loops_draw_on_one_iteration_budget(sandbox: PromptSandbox) -> None:
    source = "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
    with pytest.raises(RenderLimitError, match=f"{MAX_ITERATIONS:,} iterations"):
        render(sandbox, source)
    # the budget is per render: the next render starts afresh
    assert render(sandbox, "{% for i in range(10) %}{% endfor %}ok") == "ok"


def test_the_cap_covers_all_messages_together() -> None:
    sandbox = PromptSandbox(max_chars=1_000)
    templates = [sandbox.compile("{{ x }}"), sandbox.compile("{{ x }}")]
    assert sandbox.render(templates, {"x": "a" * 500}) == ["a" * 500, "a" * 500]
    with pytest.raises(RenderLimitError):
        sandbox.render(templates, {"x": "a" * 501})


def test_compiled_templates_are_cached_by_key(sandbox: PromptSandbox) -> None:
    first = sandbox.template("hash1:0", "{{ a }}")
    assert sandbox.template("hash1:0", "{{ a }}") is first
    assert sandbox.template("hash2:0", "{{ a }}") is not first


def test_the_cache_is_bounded() -> None:
    sandbox = PromptSandbox(cache_size=2)
    first = sandbox.template("a", "x")
    sandbox.template("b", "y")
    sandbox.template("c", "z")
    assert sandbox.template("a", "x") is not first
