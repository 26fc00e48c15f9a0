"""Rule expressions (plaintap.config.rules): evaluation, syntax errors, macros."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plaintap.config import ConfigError, load_config_text
from plaintap.config.rules import MAX_NESTING, Rule, RuleSyntaxError, compile_expr

REQUEST = {
    "http.req.method": "POST",
    "http.req.path": "/api/v1/orders",
    "http.req.host": "api.example.com",
    "http.req.url": "https://api.example.com/api/v1/orders?x=1",
    "http.req.headers.content-type": "application/json; charset=utf-8",
    "http.req.headers.x-api-key": "k-123",
    "http.res.status": 503,
    "src.process.binary": "curl",
    "src.container.name": "",
    "dst.ip": "10.20.30.40",
    "dst.port": 443,
    "dst.domain": "api.example.com",
    "tls.enabled": True,
    "direction": "egress-external",
    "latency": 0.25,
    "tags": ["alpha", "beta"],
}

CASES: list[tuple[str, dict[str, Any], bool]] = [
    # equality and literals
    ('http.req.method == "POST"', REQUEST, True),
    ("http.req.method == 'POST'", REQUEST, True),
    ('http.req.method == "post"', REQUEST, False),
    ('http.req.method != "GET"', REQUEST, True),
    ("http.res.status == 503", REQUEST, True),
    ('http.res.status == "503"', REQUEST, True),  # numeric text compares as a number
    ("dst.port == 443.0", REQUEST, True),
    ("tls.enabled == true", REQUEST, True),
    ("tls.enabled == false", REQUEST, False),
    ('tls.enabled == "true"', REQUEST, True),
    ("tls.enabled == 1", REQUEST, False),  # booleans are not numbers
    ("tls.enabled", REQUEST, True),
    ("src.container.name", REQUEST, False),  # empty text is false
    ("true", {}, True),
    ("false", {}, False),
    ('"x" == "x"', {}, True),
    # orderings
    ("http.res.status >= 500", REQUEST, True),
    ("http.res.status > 503", REQUEST, False),
    ("http.res.status < 600 and http.res.status <= 503", REQUEST, True),
    ("latency > 0.1", REQUEST, True),
    ("dst.port > -1", REQUEST, True),
    ('http.req.method < "Q"', REQUEST, True),  # text orders as text
    ('http.req.method > 5', REQUEST, False),  # text and number: not comparable
    # missing variables are null
    ("missing == 1", REQUEST, False),
    ('missing != "x"', REQUEST, True),
    ("missing != missing.too", REQUEST, True),
    ("missing > 0 or missing < 0", REQUEST, False),
    ('missing contains "a"', REQUEST, False),
    ('missing in ["a"]', REQUEST, False),
    ("missing matches /.*/", REQUEST, False),
    ("missing", REQUEST, False),
    ("not missing", REQUEST, True),
    # boolean operators and precedence
    ('http.req.method == "POST" and dst.port == 443', REQUEST, True),
    ('http.req.method == "GET" && dst.port == 443', REQUEST, False),
    ('http.req.method == "GET" or dst.port == 443', REQUEST, True),
    ('http.req.method == "GET" || dst.port == 80', REQUEST, False),
    ('not http.req.method == "GET"', REQUEST, True),
    ('!(http.req.method == "POST")', REQUEST, False),
    ("true or false and false", {}, True),  # and binds tighter than or
    ("(true or false) and false", {}, False),
    ("not true or true", {}, True),  # not binds tighter than or
    ("not (true or true)", {}, False),
    ("!!true", {}, True),
    ("true and true and true and false", {}, False),
    ("false or false or false or true", {}, True),
    # contains
    ('http.req.headers.content-type contains "json"', REQUEST, True),
    ('http.req.url contains "?x="', REQUEST, True),
    ('http.req.path contains "API"', REQUEST, False),
    ('tags contains "beta"', REQUEST, True),
    ('tags contains "gamma"', REQUEST, False),
    ('http.req.path not contains "admin"', REQUEST, True),
    ("dst.port contains 4", REQUEST, False),
    # in: lists, CIDRs, text
    ('http.req.method in ["GET", "POST"]', REQUEST, True),
    ('http.req.method in ["GET", "HEAD"]', REQUEST, False),
    ('http.req.method not in ["GET", "HEAD"]', REQUEST, True),
    ("dst.port in [80, 443, 8443]", REQUEST, True),
    ('dst.port in ["443"]', REQUEST, True),
    ('http.res.status in [500, "503"]', REQUEST, True),
    ("http.req.method in []", REQUEST, False),
    ("tls.enabled in [true]", REQUEST, True),
    ("tls.enabled in [1]", REQUEST, False),
    ('dst.ip in ["10.0.0.0/8", "192.168.1.5"]', REQUEST, True),
    ('dst.ip in ["10.0.0.0/8", "192.168.1.5"]', {"dst.ip": "192.168.1.5"}, True),
    ('dst.ip in ["10.0.0.0/8", "192.168.1.5"]', {"dst.ip": "192.168.1.6"}, False),
    ('dst.ip in ["10.0.0.0/8"]', {"dst.ip": ipaddress.ip_address("10.1.1.1")}, True),
    ('dst.ip in ["10.0.0.0/8"]', {"dst.ip": "::ffff:10.9.9.9"}, True),  # IPv4-mapped IPv6
    ('dst.ip in ["fd00::/8"]', {"dst.ip": "fd12::1"}, True),
    ('dst.ip in ["fd00::/8"]', {"dst.ip": "10.0.0.1"}, False),
    ('dst.ip in ["10.0.0.0/8"]', {"dst.ip": "not an ip"}, False),
    ('dst.ip == "10.1.1.1"', {"dst.ip": ipaddress.ip_address("10.1.1.1")}, True),
    ('"api" in http.req.host', REQUEST, True),
    ('"beta" in tags', REQUEST, True),
    ("dst.port in dst.domain", REQUEST, False),
    # matches
    ("http.req.path matches /^\\/api\\/v[0-9]+\\//", REQUEST, True),
    ("http.req.path matches /ORDERS$/", REQUEST, False),
    ("http.req.path matches /ORDERS$/i", REQUEST, True),
    ('http.req.path matches "orders$"', REQUEST, True),
    ("http.req.host matches /example/ and not http.req.path matches /health/", REQUEST, True),
    ('http.req.path not matches "^/health"', REQUEST, True),
    ("http.res.status matches /^5/", REQUEST, True),  # numbers are matched as text
    ("tls.enabled matches /true/", REQUEST, False),
    # header names are case-insensitive (callers pass them lower-cased)
    ('http.req.headers.Content-Type contains "json"', REQUEST, True),
    ('http.req.headers.X-API-Key == "k-123"', REQUEST, True),
    ('http.res.headers.Server == "nginx"', {"http.res.headers.server": "nginx"}, True),
    ('src.Process.binary == "curl"', REQUEST, False),  # only header names fold case
    # odd values never raise
    ("weird == 1", {"weird": object()}, False),
    ("weird > 1", {"weird": [1]}, False),
    ('weird contains "a"', {"weird": {"a": 1}}, False),
    ("weird", {"weird": float("nan")}, True),
    # rulekit's number forms, byte strings, operator aliases and list semantics
    ("x == 0x1f", {"x": 31}, True),
    ("x == 0X1F", {"x": 31}, True),
    ("x == 0o17", {"x": 15}, True),
    ("x == 0b101", {"x": 5}, True),
    ("x == 1_000", {"x": 1000}, True),
    ("x == 010", {"x": 10}, True),  # a leading zero is still decimal
    ("x == 1.5", {"x": 1.5}, True),
    ("x == -0x10", {"x": -16}, True),
    ('x"504f5354" == "POST"', {}, True),
    ("X'504f5354' == http.req.method", REQUEST, True),
    ("X'474554' == http.req.method", REQUEST, False),
    ("http.req.method == 50:4f:53:54", REQUEST, True),
    ("http.req.method != 47:45:54", REQUEST, True),
    ("http.req.method == 47:45:54", REQUEST, False),
    ('x"0a" == "\\n"', {}, True),
    ('x"0a" == v', {"v": "\n"}, True),
    ("http.req.method in [x'504f5354', 47:45:54]", REQUEST, True),
    ("dst.ip == 01:23:45:67:89:ab:cd:ef", {"dst.ip": "1:23:45:67:89:ab:cd:ef"}, True),  # eight pairs: IPv6
    ("dst.ip == 0001:0023:0045:0067:0089:00ab:00cd:00ef", {"dst.ip": "1:23:45:67:89:ab:cd:ef"}, True),
    ("b contains 50:4f", {"b": b"xPOy"}, True),
    ("http.req.path =~ /orders$/", REQUEST, True),
    ("http.req.path =~ |/api/v1/|", REQUEST, True),
    ("http.req.path matches |^/API/|i", REQUEST, True),
    ("http.req.path not =~ /health/", REQUEST, True),
    ("http.req.path not =~ /orders/", REQUEST, False),
    ('http.req.host subdomain_of "example.com"', {"http.req.host": "api.example.com"}, True),
    ('http.req.host subdomain_of "example.com"', {"http.req.host": "example.com."}, True),
    ('http.req.host subdomain_of "example.com"', {"http.req.host": "badexample.com"}, False),
    ('http.req.host not subdomain_of "example.com"', {"http.req.host": "example.org"}, True),
    ('http.req.method == ["GET", "POST"]', REQUEST, True),
    ('http.req.method == ["PUT", "GET"]', REQUEST, False),
    ('http.req.method != ["PUT", "GET"]', REQUEST, True),
    ('http.req.method != ["GET", "POST"]', REQUEST, False),
    ('dst.ip == ["10.0.0.0/8"]', {"dst.ip": "10.1.1.1"}, False),  # == is equality, not membership
    ("10.0.0.0/8 contains dst.ip", {"dst.ip": "10.1.1.1"}, True),
    ("10.0.0.0/8 contains dst.ip", {"dst.ip": "11.1.1.1"}, False),
    ("fd00::/8 contains dst.ip", {"dst.ip": "10.1.1.1"}, False),
    ('answers == "b"', {"answers": ["a", "b"]}, True),  # a list value: any item
    ('answers in ["b", "c"]', {"answers": ["a", "b"]}, True),
    ('answers in ["c"]', {"answers": ["a", "b"]}, False),
    ("TRUE", {}, True),
    ("x == False", {"x": False}, True),
    ("not x == 1", {"x": 2}, True),  # not binds looser than a comparison
]


@pytest.mark.parametrize(("text", "variables", "expected"), CASES)
def test_evaluate(text: str, variables: dict[str, Any], expected: bool) -> None:
    result = compile_expr(text).evaluate(variables)
    assert result is expected


def test_rule_knows_its_variables() -> None:
    rule = compile_expr('a.b == 1 and http.req.headers.Content-Type contains "x" or m()', {"m": "c.d in [1]"})
    assert rule.variables == frozenset({"a.b", "http.req.headers.content-type", "c.d"})
    assert rule.text.startswith("a.b")
    assert rule == compile_expr(rule.text, {"m": "c.d in [1]"}) and isinstance(rule, Rule)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "the expression is empty"),
        ("   ", 1, "the expression is empty"),
        ("a ==", 5, "expected a value after '=='"),
        ("a = 1", 3, "use '==' to compare"),
        ("a == 1 & b", 8, "use '&&' (or 'and')"),
        ("a == 1 | b", 8, "use '||' (or 'or')"),
        ("(a == 1", 8, "expected ')' to close the '(' at column 1, found the end of the expression"),
        ("a == 1)", 7, "expected 'and', 'or' or the end of the expression, found ')'"),
        ("a == 1 == 2", 8, "expected 'and', 'or' or the end of the expression, found '=='"),
        ("a b", 3, "expected 'and', 'or' or the end of the expression, found 'b'"),
        ("and", 1, "expected a value, a variable or '(', found 'and'"),
        ("a and", 6, "the expression ends where a value was expected"),
        ('a == "abc', 6, 'text starting with " is never closed'),
        ("a == 'abc", 6, "text starting with ' is never closed"),
        ("a matches /abc", 11, "regular expression starting with / is never closed"),
        ("a matches /(/", 11, "invalid regular expression: missing ): ("),
        ('a matches "["', 11, "invalid regular expression: missing ]: ["),
        ("a matches /(a)\\1/", 11, "invalid regular expression: invalid escape sequence: \\1"),
        ("a matches /x(?=y)/", 11, "invalid regular expression: invalid perl operator: (?="),
        ("a matches /x/g", 14, "unknown regular expression flag 'g' (use i, m or s)"),
        ("a matches b", 11, "'matches' needs a /regular expression/ or a quoted pattern"),
        ("a == /x/", 6, "unexpected '/' (a /regular expression/ goes after 'matches')"),
        ("a in [b]", 7, "list items must be literal text, numbers or booleans, found 'b'"),
        ("a in [1 2]", 9, "expected ',' or ']' in the list, found '2'"),
        ("a in [1,", 9, "the list opened at column 6 is never closed"),
        ("dst.ip == 10.0.0", 11, "malformed number '10.0.0' (put text and addresses in quotes)"),
        ("dst.ip in 999.0.0.0/8", 11, "'999.0.0.0/8' is not an IP address or CIDR block"),
        ("starts_with(dst.ip)", 1, "starts_with() takes 2 arguments, got 1"),
        ("lower(a, b)", 1, "lower() takes 1 argument, got 2"),
        ('a["k" == 1', 6, "expected ']' after a['k'"),
        ("x == 5-3", 6, "malformed number '5-3' (put text and addresses in quotes)"),
        ("http.req. == 1", 1, "variable name 'http.req.' is incomplete"),
        ("a == 1 ; b", 8, "unexpected character ';'"),
        ("a == 1 - 2", 8, "unexpected character '-'"),
        ("a == £", 6, "unexpected character '£'"),
        ("m(1)", 3, "macro m() takes no arguments (rulekit macros are zero-argument rules)"),
        ("x == 1__0", 6, "malformed number '1__0' ('_' goes only between digits)"),
        ("x == 0xZZ", 6, "malformed number '0xZZ' (put text and addresses in quotes)"),
        ('x"abc" == y', 1, "x'abc' is not hex pairs (write bytes as x\"504f5354\")"),
        ('x"zz" == y', 1, "x'zz' is not hex pairs (write bytes as x\"504f5354\")"),
        ("a =~ |abc", 6, "regular expression starting with | is never closed"),
        ("a.b()", 1, "'a.b' is not a macro name"),
        ("nope()", 1, "unknown macro 'nope' (macros: none are defined under rulekit.macros)"),
        ("(" * (MAX_NESTING + 1) + "true" + ")" * (MAX_NESTING + 1), MAX_NESTING + 1, f"the expression nests more than {MAX_NESTING} levels deep"),
        ("not " * (MAX_NESTING + 1) + "true", 4 * MAX_NESTING + 1, f"the expression nests more than {MAX_NESTING} levels deep"),
        ("a == " + "9" * 5000, 6, "number has too many digits"),
    ],
)
def test_syntax_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        compile_expr(text)
    assert (caught.value.column, caught.value.message) == (column, message)
    assert str(caught.value) == f"syntax error at column {column}: {message}"


def test_deep_but_allowed_nesting() -> None:
    depth = MAX_NESTING - 1
    assert compile_expr("(" * depth + "x == 1" + ")" * depth).evaluate({"x": 1})


MACROS = {
    "is_get": 'http.req.method == "GET"',
    "is_api": 'http.req.host contains "api." and not is_health()',
    "is_health": 'http.req.path in ["/healthz", "/readyz"]',
    "broken": "http.req.path ==",
    "uses_broken": "true and broken()",
    "loop_a": "x and loop_b()",
    "loop_b": "loop_c() or y",
    "loop_c": "loop_a()",
    "self": "self()",
}


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("is_get()", {"http.req.method": "GET"}, True),
        ("is_get() and is_api()", {"http.req.method": "GET", "http.req.host": "api.x", "http.req.path": "/v1"}, True),
        ("is_api()", {"http.req.host": "api.x", "http.req.path": "/healthz"}, False),
        ("not is_health()", {"http.req.path": "/v1"}, True),
        ("is_get() == true", {"http.req.method": "GET"}, True),
    ],
)
def test_macros(text: str, variables: dict[str, Any], expected: bool) -> None:
    assert compile_expr(text, MACROS).evaluate(variables) is expected


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("self()", 1, "in macro 'self' at column 1: macro 'self' calls itself (self → self)"),
        ("x or loop_a()", 6, "in macro 'loop_c' at column 1: macro 'loop_a' calls itself (loop_a → loop_b → loop_c → loop_a)"),
        ("broken()", 1, "in macro 'broken' at column 17: expected a value after '=='"),
        ("uses_broken()", 1, "in macro 'broken' at column 17: expected a value after '=='"),
        ("is_gett()", 1, "unknown macro 'is_gett' (macros: broken, is_api, is_get, is_health, loop_a, loop_b, loop_c, self, uses_broken)"),
    ],
)
def test_macro_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        compile_expr(text, MACROS)
    assert (caught.value.column, caught.value.message) == (column, message)


def test_long_macro_chain_is_bounded() -> None:
    chain = {f"m{i}": f"m{i + 1}()" for i in range(200)}
    chain["m200"] = "true"
    with pytest.raises(RuleSyntaxError, match="nests more than"):
        compile_expr("m0()", chain)


# --------------------------------------------------------------------------------------
# in a configuration


def test_rule_problems_in_config_name_path_and_column() -> None:
    text = """\
rulekit:
  macros:
    - {name: loop, expr: "loop()"}
    - {name: ok, expr: "dst.port == 1"}
    - {name: "bad name", expr: "true"}
stacks:
  s:
    plugins:
      - type: http_capture
        config:
          rules:
            - {name: a, expr: 'ok() and http.req.method = "GET"', level: full}
            - {name: b, expr: 'undefined_macro()', level: full}
            - {name: c, expr: 42, level: full}
      - type: access_logs
        config:
          rules:
            - {name: d, expr: 'http.res.status >=', mode: full}
"""
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert caught.value.problems == [
        "stacks.s.plugins[0].config.rules[0].expr: syntax error at column 26: use '==' to compare",
        "stacks.s.plugins[0].config.rules[1].expr: syntax error at column 1: unknown macro 'undefined_macro' (macros: loop, ok)",
        "stacks.s.plugins[0].config.rules[2].expr: expected a rule expression (text), got the number 42",
        "stacks.s.plugins[1].config.rules[0].expr: syntax error at column 19: expected a value after '>='",
        "rulekit.macros[0].expr: syntax error at column 1: in macro 'loop' at column 1: macro 'loop' calls itself (loop → loop)",
        "rulekit.macros[2].name: 'bad name' is not a valid macro name (letters, digits and _, not starting with a digit)",
    ]


def test_duplicate_macro_names() -> None:
    text = "rulekit:\n  macros:\n    - {name: m, expr: 'true'}\n    - {name: m, expr: 'false'}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    assert caught.value.problems == ["rulekit.macros[1].name: macro 'm' is defined twice"]


def test_config_rules_dump_as_text() -> None:
    config = load_config_text("rulekit:\n  macros:\n    - {name: m, expr: 'dst.port == 1'}\n")
    assert config.model_dump()["rulekit"]["macros"] == [{"name": "m", "expr": "dst.port == 1"}]
    assert config.rulekit.macro_texts == {"m": "dst.port == 1"}


# --------------------------------------------------------------------------------------
# properties

_TOKENS = st.sampled_from(
    [
        "a", "http.req.headers.x-y", "dst.ip", "m()", "loop()", "1", "-2", "3.5", '"s"', "'t'", "true", "false",
        "==", "!=", ">", ">=", "<", "<=", "and", "or", "not", "&&", "||", "!", "contains", "in", "matches",
        "/x+/", "/[/", "/a/i", "(", ")", "[", "]", ",", '"10.0.0.0/8"', "=", "&", "|", "-", ".", "\\", '"', "'",
        "=~", "|a|", 'x"0a"', "x'", "50:4f", "0x1f", "1_0", "subdomain_of", "TRUE", "10.0.0.0/8",
    ]
)  # fmt: skip
_PROPERTY_MACROS = {"m": "a == 1", "loop": "loop()"}


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_random_text_only_raises_rule_syntax_error(text: str) -> None:
    try:
        rule = compile_expr(text, _PROPERTY_MACROS)
    except RuleSyntaxError as err:
        assert 1 <= err.column <= len(text) + 1
    else:
        assert isinstance(rule.evaluate({}), bool)


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
    st.lists(st.text(max_size=3), max_size=3), st.just("10.1.2.3"), st.just("::1"),
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_TOKENS, max_size=20), st.dictionaries(st.sampled_from(["a", "dst.ip", "http.req.headers.x-y"]), _VALUES))
def test_token_soup_compiles_or_fails_cleanly_and_evaluates_to_bool(tokens: list[str], variables: dict[str, Any]) -> None:
    text = " ".join(tokens)
    try:
        rule = compile_expr(text, _PROPERTY_MACROS)
    except RuleSyntaxError as err:
        assert 1 <= err.column <= len(text) + 1
    else:
        assert isinstance(rule.evaluate(variables), bool)
