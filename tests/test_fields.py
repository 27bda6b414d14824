"""The shared recipe validators (xllama.data.fields): values checked and normalised, errors naming the key."""

from __future__ import annotations

import pytest

from xllama.data import fields
from xllama.errors import XllamaError


def test_values_are_normalised():
    assert fields.integer(64, "k") == 64 and fields.integer(64.0, "k") == 64
    assert type(fields.integer(64.0, "k")) is int
    assert fields.positive_number(2, "k") == 2.0
    assert fields.size(10, "k") == 10 and fields.size(0.5, "k") == 0.5 and fields.size(0, "k") == 0
    assert fields.language("ZH", "k") == "zh"
    assert fields.language_list("de, zh,", "k") == ["de", "zh"] and fields.language_list(None, "k") is None
    assert fields.language_pair("DE-en", "k") == "de-en"
    assert fields.locations(" a ", "k") == ["a"] and fields.locations(["a", "hf:o/n"], "k") == ["a", "hf:o/n"]
    assert fields.mapping(None, "k") == {} and fields.choice("b", ("a", "b"), "k") == "b"
    assert fields.language_locations({"ZH": "a", "de": ["b", "c"]}, "k") == {"zh": ["a"], "de": ["b", "c"]}
    assert fields.pair_locations({"DE-en": "a"}, "k") == {"de-en": ["a"]} and fields.pair_locations(None, "k") == {}
    counts = [fields.parse_count(v, "k") for v in (20_000_000, 2e7, "20M", "20m", "0.5K", " 3 B ", "1e3")]
    assert counts == [20_000_000, 20_000_000, 20_000_000, 20_000_000, 500, 3_000_000_000, 1000]


@pytest.mark.parametrize("check, value, message", [
    (lambda v: fields.integer(v, "recipe.data.seed", minimum=0), -1, r"recipe\.data\.seed: expected an integer >= 0, got -1"),
    (lambda v: fields.integer(v, "recipe.data.seed"), True, r"recipe\.data\.seed: expected an integer, got True"),
    (lambda v: fields.integer(v, "recipe.data.seed"), 1.5, r"expected an integer, got 1\.5"),
    (lambda v: fields.integer(v, "recipe.data.seed"), "7", r"expected an integer, got '7'"),
    (lambda v: fields.positive_number(v, "recipe.data.temperature"), 0, r"data\.temperature: expected a positive number, got 0"),
    (lambda v: fields.positive_number(v, "t", " (1: natural)"), False, r"t: expected a positive number \(1: natural\)"),
    (lambda v: fields.size(v, "recipe.data.sizes.x"), 1.5, r"sizes\.x: a fraction must be in \(0, 1\]"),
    (lambda v: fields.size(v, "recipe.data.sizes.x"), -2, r"sizes\.x: a count must be >= 0"),
    (lambda v: fields.size(v, "recipe.data.sizes.x"), "10", r"sizes\.x: expected a count \(integer\) or a fraction"),
    (lambda v: fields.parse_count(v, "recipe.data.token_budget"), "lots", r"token_budget: expected a token count"),
    (lambda v: fields.parse_count(v, "recipe.data.token_budget"), 0.5, r"token_budget: must be at least 1"),
    (lambda v: fields.language(v, "recipe.data.monolingual.xx"), "xx", r"monolingual\.xx: unknown language code"),
    (lambda v: fields.language_list(v, "recipe.data.languages"), ["de", "xx"], r"languages\[1\]: unknown language"),
    (lambda v: fields.language_list(v, "recipe.data.languages"), {"de": 1}, r"languages: expected a list"),
    (lambda v: fields.language_pair(v, "recipe.data.parallel.deen"), "deen", r"parallel\.deen: bad language pair"),
    (lambda v: fields.mapping(v, "recipe.data.sizes"), [1], r"recipe\.data\.sizes: expected a mapping"),
    (lambda v: fields.locations(v, "recipe.data.guard"), [], r"recipe\.data\.guard: expected a location"),
    (lambda v: fields.locations(v, "recipe.data.guard"), ["a", " "], r"recipe\.data\.guard: expected a location"),
    (lambda v: fields.pair_locations(v, "recipe.data.valid"), {"de-en": 3}, r"recipe\.data\.valid\.de-en: expected a location"),
    (lambda v: fields.language_locations(v, "recipe.data.monolingual"), "x", r"data\.monolingual: expected a mapping"),
    (lambda v: fields.choice(v, ("en-x", "x-en"), "recipe.data.directions"), "up",
     r"recipe\.data\.directions: expected one of en-x, x-en, got 'up'"),
])
def test_errors_name_the_key(check, value, message):
    with pytest.raises(XllamaError, match=message):
        check(value)
