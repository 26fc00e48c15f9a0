"""User regular expressions run with RE2 (config/regex.py): rules `matches` and
tap.filters `strategy: regex` read text other processes control, so a pattern that makes
a backtracking engine take exponential time must not stall the agent."""
from __future__ import annotations

import re

import pytest

from plaintap.config import compile_expr, load_config_text
from plaintap.config.regex import ENGINE, RegexError, compile_regex
from plaintap.config.rules import RuleSyntaxError

EVIL = "(a+)+$"
HOSTILE = "a" * 5000 + "!"   # Python's re would need ~2^5000 steps for EVIL on this


def test_the_engine_is_re2_not_python_re():
    assert ENGINE == "re2"
    pattern = compile_regex("^/api/")
    assert not isinstance(pattern, re.Pattern)
    assert type(pattern).__module__.startswith("re2")


def test_catastrophic_pattern_answers_on_hostile_text():
    # With `re` this search would not finish; RE2 answers (no match) in linear time.
    assert compile_regex(EVIL).search(HOSTILE) is None
    assert compile_regex(EVIL).search("aaaa") is not None


def test_rule_matches_uses_re2_on_hostile_header():
    rule = compile_expr(f"http.req.headers.x-evil matches /{EVIL}/")
    assert rule.evaluate({"http.req.headers.x-evil": HOSTILE}) is False
    assert rule.evaluate({"http.req.headers.x-evil": "aaa"}) is True


def test_filter_regex_uses_re2_on_hostile_path():
    cfg = load_config_text(f"tap:\n  filters:\n    custom:\n      - {{exe: '{EVIL}', strategy: regex}}\n")
    entry = cfg.tap.filters.custom[0]
    assert entry.matches("/usr/bin/" + HOSTILE) is False
    assert entry.matches("/usr/bin/aaa") is True


@pytest.mark.parametrize("flags, text, expect", [
    ({"ignore_case": True}, "/API", True),
    ({}, "/API", False),
    ({"multiline": True}, "x\n/api", True),
    ({}, "x\n/api", False),
])
def test_flags(flags, text, expect):
    assert (compile_regex("^/api", **flags).search(text) is not None) is expect


def test_dot_all():
    assert compile_regex("a.b").search("a\nb") is None
    assert compile_regex("a.b", dot_all=True).search("a\nb") is not None


@pytest.mark.parametrize("pattern, reason", [
    (r"(a)\1", "invalid escape sequence"),
    ("(?<=a)b", "invalid perl operator"),
    ("(", "missing )"),
    ("a{1001}", "invalid repetition size"),
])
def test_unsupported_or_invalid_patterns_are_refused_with_reason(pattern, reason):
    with pytest.raises(RegexError, match=re.escape(reason)):
        compile_regex(pattern)
    with pytest.raises(RuleSyntaxError, match="invalid regular expression"):
        compile_expr(f'http.req.path matches "{pattern}"'.replace("\\", "\\\\"))
