"""Rule expressions: the small boolean language of qtap's rulekit, compiled once.

Rules decide per HTTP transaction what to capture or log (`http_capture.rules[].expr`,
`access_logs.rules[].expr`, `rulekit.macros[].expr`), so they are compiled when the
configuration loads and evaluated many times. A hand-written tokenizer and a
recursive-descent parser turn the text straight into nested Python closures;
`Rule.evaluate(vars)` only calls functions and never parses.

The language::

    expr       := or
    or         := and  (("or"  | "||") and)*
    and        := unary (("and" | "&&") unary)*
    unary      := ("not" | "!") unary | comparison
    comparison := operand [op operand]
    op         := == != > >= < <= | eq ne gt ge lt le | subdomain_of
                | ["not"] (contains | in | matches | =~)
    operand    := "text" | 'text' | 123 | -1.5 | 0x1f | 0o17 | 0b101 | 1_000 | true | false
                | x"504f5354" | 50:4f:53:54                     (byte strings, rulekit's hex)
                | [literal, ...]
                | 10.0.0.1 | 10.0.0.0/8 | ::1 | fd00::/8          (IP and CIDR literals)
                | variable | variable["key"] | macro() | function(operand, ...) | "(" expr ")"

* Variables are dotted names such as `http.req.method` or `dst.port`. There is no
  arithmetic, so `-` inside a name is part of it: `http.req.headers.content-type` is one
  variable, while `-1` after an operator is a negative number.
* `vars` is any `Mapping` keyed by the full dotted name (a lazy mapping works: only the
  names a rule uses are looked up, and `Rule.variables` lists them). A missing variable is
  null: every comparison with null is false, except `!=` which is true.
* Header names are case-insensitive: the part after `http.req.headers.` and
  `http.res.headers.` is lower-cased here, so callers must pass header names
  lower-cased (`vars["http.req.headers.content-type"]`).
* `==` and the orderings compare text with text and numbers with numbers; a number and
  a numeric text compare as numbers (`http.res.status == "200"` holds for 200).
* `a contains b`: substring for text, membership for a list value.
* `a in [..]`: membership; list items that are IP addresses or CIDR blocks also match
  any address inside them (`dst.ip in ["10.0.0.0/8", "192.168.1.5"]`). `a in "text"`
  is a substring test.
* Numbers as rulekit writes them: decimal (`010` is ten), `0x`/`0o`/`0b` prefixes and `_`
  separators; `true`/`false` in any letter case.
* Byte strings: `x"504f5354"` (also `X` and single quotes) or two or more colon-separated
  hex pairs (`50:4f:53:54`; eight pairs read as an IPv6 address). A byte string equals a
  text with the same UTF-8 bytes: `x"504f5354" == "POST"`.
* A list on the right of `==` holds when any item is equal, of `!=` when none is; a list
  value on the left of `==`, `contains` or `in` holds when any of its items does.
* `a subdomain_of "example.com"`: `a` is that name or a name under it (as `in_zone`).
* `a contains b` also holds for a CIDR block `a` holding the address `b`.
* `a matches /re/flags` (flags i, m, s), `a =~ |re|` or `a matches "re"`: a search with RE2
  (config/regex.py: linear time on the hostile text rules read; no backreferences or
  lookaround); the pattern is compiled once, here.
* `name()` expands the macro `name` (from `rulekit.macros`) in place; a macro that
  reaches itself again is an error. Macros take no arguments, as in rulekit (its README:
  "a zero-argument function that encapsulates a predefined rule"); `name(x)` is refused.
* IP addresses and CIDR blocks may be written bare, as in rulekit: `dst.ip == 10.0.0.1`,
  `dst.ip in 10.0.0.0/8`, `src.ip in [127.0.0.0/8, ::1]`.
* Bracket access names a key with punctuation: `http.req.headers["user-agent"]` is
  `http.req.headers.user-agent`; `src.container.labels["app.kubernetes.io/name"]` reads
  that label.
* Functions (rulekit's standard library and qtap's): `starts_with(value, prefix)`,
  `ends_with(value, suffix)`, `in_zone(host, "example.com")` (the name or any under it),
  `lower(value)`, `upper(value)`, `len(value)`.
* qtap's older names `request.*` / `response.*` read as `http.req.*` / `http.res.*`.

`compile_expr` raises `RuleSyntaxError(message, column)` (column counted from 1) for
any text it cannot compile; evaluation itself never raises for odd variable values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .regex import RegexError, compile_regex

__all__ = ["Rule", "RuleSyntaxError", "compile_expr", "HEADER_PREFIXES"]

# Parentheses, `not` and macro calls may nest this deep; deeper text is refused rather
# than risking Python's recursion limit while parsing or evaluating.
MAX_NESTING = 64

HEADER_PREFIXES = ("http.req.headers.", "http.res.headers.")

Vars = Mapping[str, object]
Getter = Callable[[Vars], object]
Test = Callable[[Vars], bool]


class RuleSyntaxError(ValueError):
    """A rule expression that cannot be compiled; `column` counts from 1."""

    def __init__(self, message: str, column: int, macro: str | None = None) -> None:
        super().__init__(f"syntax error at column {column}: {message}")
        self.message = message
        self.column = column
        # The innermost macro the error is in, so nested expansions name it only once.
        self.macro = macro


class Rule:
    """A compiled rule expression. `evaluate(vars)` is cheap and never raises."""

    __slots__ = ("text", "variables", "_test")

    def __init__(self, text: str, test: Test, variables: frozenset[str]) -> None:
        self.text = text
        self.variables = variables  # every variable name it reads, macros included
        self._test = test

    def evaluate(self, vars: Vars) -> bool:
        return self._test(vars)

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def compile_expr(text: str, macros: Mapping[str, str] | None = None) -> Rule:
    """Compile `text` into a `Rule`; `macros` maps macro names to their expressions.

    Raises RuleSyntaxError for a syntax error, an unknown or recursive macro, or an
    invalid regular expression.
    """
    if not isinstance(text, str):
        raise RuleSyntaxError(f"expected the expression as text, got {type(text).__name__}", 1)
    compiler = _Compiler(dict(macros or {}))
    test, variables = compiler.compile(text, expanding=())
    return Rule(text, test, variables)


# ---------------------------------------------------------------------------------------
# Tokens

_KEYWORDS = frozenset({"and", "or", "not", "contains", "in", "matches", "subdomain_of", "true", "false"})
# operators spelled as words, taking a value on each side
_WORD_OPERATORS = ("contains", "in", "matches", "subdomain_of")
# rulekit's word forms of the comparison operators
_OPERATOR_WORDS = {"eq": "==", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# An IPv4 address or CIDR block, or an IPv6 one (at least two colons), written bare.
_IPV4_LITERAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?(?![A-Za-z0-9_.:-])")
_IPV6_LITERAL = re.compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/[0-9]{1,3})?(?![A-Za-z0-9_.:-])")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
_NUMBER = re.compile(r"-?(?:0[xX][0-9A-Fa-f_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*(?:\.[0-9][0-9_]*)?)")
# rulekit's hexadecimal strings: two or more colon-separated pairs, or x"..." / X'...'
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})+(?![A-Za-z0-9_.:/-])")
_HEX_DIGITS = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_WORDISH = re.compile(r"[A-Za-z0-9_.:/-]+")  # how far a malformed number reaches, for the message
_SPACE = re.compile(r"\s*")
_TWO_CHAR_OPERATORS = ("==", "!=", ">=", "<=", "&&", "||", "=~")
_ONE_CHAR_OPERATORS = "><!()[],"
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "string" "bytes" "number" "regex" "name" "keyword" "op" "ip" "end"
    value: Any
    column: int

    def describe(self) -> str:
        if self.kind == "end":
            return "the end of the expression"
        if self.kind == "string":
            return f"text {self.value!r}"
        if self.kind == "regex":
            return "a regular expression"
        return repr(str(self.value))


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = _SPACE.match(text, 0).end()
    length = len(text)
    while pos < length:
        char = text[pos]
        column = pos + 1
        after_matches = bool(tokens) and tokens[-1].kind == "keyword" and tokens[-1].value == "matches"
        if char in "xX" and text[pos + 1 : pos + 2] in ("\"", "'"):
            value, pos = _read_string(text, pos + 1)
            tokens.append(_Token("bytes", _hex_bytes(value, column), column))
        elif char in "\"'":
            value, pos = _read_string(text, pos)
            tokens.append(_Token("string", value, column))
        elif char == "/" or (char == "|" and after_matches):
            if not after_matches:
                raise RuleSyntaxError("unexpected '/' (a /regular expression/ goes after 'matches')", column)
            pattern, pos = _read_regex(text, pos)
            tokens.append(_Token("regex", pattern, column))
        elif (ip := _ip_literal(text, pos)) is not None:
            value, pos = ip
            tokens.append(_Token("ip", value, column))
        elif (pairs := _HEX_PAIRS.match(text, pos)) is not None:
            tokens.append(_Token("bytes", bytes.fromhex(pairs.group().replace(":", "")), column))
            pos = pairs.end()
        elif char.isdigit() or (char == "-" and text[pos + 1 : pos + 2].isdigit()):
            match = _NUMBER.match(text, pos)
            if match is None or (match.end() < length and _WORDISH.match(text, match.end())):
                chunk = _WORDISH.match(text, pos)
                word = chunk.group() if chunk else char
                raise RuleSyntaxError(f"malformed number {word!r} (put text and addresses in quotes)", column)
            tokens.append(_Token("number", _number(match.group(), column), column))
            pos = match.end()
        elif char.isascii() and (char.isalpha() or char == "_"):
            match = _IDENTIFIER.match(text, pos)
            assert match is not None  # the first character already matches
            name = match.group()
            pos = match.end()
            while pos < length and text[pos] == "[" and text[pos + 1 : pos + 2] in ("\"", "'"):
                key, pos = _read_string(text, pos + 1)   # bracket access: name["key"]
                if text[pos : pos + 1] != "]":
                    raise RuleSyntaxError(f"expected ']' after {name}[{key!r}", pos + 1)
                pos += 1
                name = f"{name}.{key}"
            if pos < length and text[pos] == ".":
                raise RuleSyntaxError(f"variable name {name + '.'!r} is incomplete", column)
            if name in _OPERATOR_WORDS:
                tokens.append(_Token("op", _OPERATOR_WORDS[name], column))
            elif name.lower() in ("true", "false"):   # rulekit: any letter case
                tokens.append(_Token("keyword", name.lower(), column))
            else:
                tokens.append(_Token("keyword" if name in _KEYWORDS else "name", name, column))
        elif text.startswith("=~", pos):   # rulekit's alias of `matches`
            tokens.append(_Token("keyword", "matches", column))
            pos += 2
        elif text.startswith(_TWO_CHAR_OPERATORS, pos):
            tokens.append(_Token("op", text[pos : pos + 2], column))
            pos += 2
        elif char in _ONE_CHAR_OPERATORS:
            tokens.append(_Token("op", char, column))
            pos += 1
        elif char == "=":
            raise RuleSyntaxError("use '==' to compare", column)
        elif char in "&|":
            raise RuleSyntaxError(f"use '{char * 2}' (or '{'and' if char == '&' else 'or'}')", column)
        else:
            raise RuleSyntaxError(f"unexpected character {char!r}", column)
        pos = _SPACE.match(text, pos).end()
    tokens.append(_Token("end", None, length + 1))
    return tokens


def _ip_literal(text: str, pos: int) -> tuple[object, int] | None:
    """A bare IP address or CIDR block at `pos` (as an ipaddress object) and the position
    after it, or None when the text there is not one."""
    for pattern in (_IPV4_LITERAL, _IPV6_LITERAL):
        match = pattern.match(text, pos)
        if match is None:
            continue
        literal = match.group()
        try:
            value = ipaddress.ip_network(literal, strict=False) if "/" in literal else ipaddress.ip_address(literal)
        except ValueError:
            if pattern is _IPV4_LITERAL:
                raise RuleSyntaxError(f"{literal!r} is not an IP address or CIDR block", pos + 1) from None
            continue
        return value, match.end()
    return None


def _number(literal: str, column: int) -> int | float:
    digits = literal.lstrip("-")
    try:
        if "." in digits:
            return float(literal)
        if digits[:2].lower() in ("0x", "0o", "0b"):
            return int(literal, 0)
        return int(literal)   # decimal, so a leading zero does not make it octal
    except ValueError:  # more digits than Python converts, or a misplaced '_'
        if len(digits) > 256:
            raise RuleSyntaxError("number has too many digits", column) from None
        raise RuleSyntaxError(f"malformed number {literal!r} ('_' goes only between digits)", column) from None


def _hex_bytes(digits: str, column: int) -> bytes:
    """The bytes of x"..." (hex digits in pairs)."""
    if not _HEX_DIGITS.fullmatch(digits):
        raise RuleSyntaxError(f"x{digits!r} is not hex pairs (write bytes as x\"504f5354\")", column)
    return bytes.fromhex(digits)


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(text):
            escaped = text[pos + 1]
            out.append(_ESCAPES.get(escaped, "\\" + escaped))
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise RuleSyntaxError(f"text starting with {quote} is never closed", start + 1)


def _read_regex(text: str, start: int) -> tuple[Any, int]:
    delimiter = text[start]   # `/` or, as rulekit allows, `|`
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == delimiter:
            break
        if char == "\\" and pos + 1 < len(text):
            # an escaped delimiter is the character itself; every other escape is left for `re` to read.
            out.append(delimiter if text[pos + 1] == delimiter else text[pos : pos + 2])
            pos += 2
            continue
        out.append(char)
        pos += 1
    else:
        raise RuleSyntaxError(f"regular expression starting with {delimiter} is never closed", start + 1)
    pos += 1
    flags = 0
    while pos < len(text) and text[pos].isascii() and text[pos].isalpha():
        flag = _REGEX_FLAGS.get(text[pos])
        if flag is None:
            raise RuleSyntaxError(f"unknown regular expression flag {text[pos]!r} (use i, m or s)", pos + 1)
        flags |= flag
        pos += 1
    return _compile_regex("".join(out), flags, start + 1), pos


def _compile_regex(pattern: str, flags: int, column: int) -> Any:
    try:
        return compile_regex(pattern, ignore_case=bool(flags & re.IGNORECASE), multiline=bool(flags & re.MULTILINE),
                             dot_all=bool(flags & re.DOTALL))
    except RegexError as err:
        raise RuleSyntaxError(f"invalid regular expression: {err}", column) from None


# ---------------------------------------------------------------------------------------
# Parsing straight into closures


@dataclass(frozen=True, slots=True)
class _Operand:
    """One side of a comparison, kept apart so literals can be specialised."""

    kind: str  # "literal" | "variable" | "test" | "call" (a function: its value getter)
    value: Any  # the literal, the variable name, or a Test closure
    column: int
    is_regex: bool = False


class _Compiler:
    """Compiles one top-level expression; shares compiled macros between uses."""

    def __init__(self, macros: dict[str, str]) -> None:
        self.macros = macros
        self.compiled_macros: dict[str, tuple[Test, frozenset[str]]] = {}

    def compile(self, text: str, expanding: tuple[str, ...], depth: int = 0) -> tuple[Test, frozenset[str]]:
        parser = _Parser(self, _tokenize(text), expanding, depth)
        if parser.peek.kind == "end":
            raise RuleSyntaxError("the expression is empty", 1)
        test = parser.parse_or()
        if parser.peek.kind != "end":
            raise RuleSyntaxError(
                f"expected 'and', 'or' or the end of the expression, found {parser.peek.describe()}",
                parser.peek.column,
            )
        return test, frozenset(parser.variables)

    def expand_macro(self, name: str, column: int, expanding: tuple[str, ...], depth: int) -> tuple[Test, frozenset[str]]:
        if name in expanding:
            chain = " → ".join((*expanding[expanding.index(name) :], name))
            raise RuleSyntaxError(f"macro {name!r} calls itself ({chain})", column)
        if name not in self.macros:
            known = ", ".join(sorted(self.macros)) or "none are defined under rulekit.macros"
            raise RuleSyntaxError(f"unknown macro {name!r} (macros: {known})", column)
        if name in self.compiled_macros:
            return self.compiled_macros[name]
        try:
            compiled = self.compile(self.macros[name], (*expanding, name), depth)
        except RuleSyntaxError as err:
            if err.macro is not None:  # already names the macro it happened in
                raise RuleSyntaxError(err.message, column, err.macro) from None
            message = f"in macro {name!r} at column {err.column}: {err.message}"
            raise RuleSyntaxError(message, column, name) from None
        self.compiled_macros[name] = compiled
        return compiled


class _Parser:
    def __init__(self, compiler: _Compiler, tokens: list[_Token], expanding: tuple[str, ...], depth: int) -> None:
        self.compiler = compiler
        self.tokens = tokens
        self.index = 0
        self.expanding = expanding
        self.depth = depth
        self.variables: set[str] = set()

    # -- token helpers

    @property
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def peek_at(self, offset: int) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, kind: str, *values: str) -> bool:
        token = self.peek
        return token.kind == kind and (not values or token.value in values)

    def nest(self, column: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise RuleSyntaxError(f"the expression nests more than {MAX_NESTING} levels deep", column)

    # -- grammar

    def parse_or(self) -> Test:
        terms = [self.parse_and()]
        while self.at("keyword", "or") or self.at("op", "||"):
            self.advance()
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else _any_of(terms)

    def parse_and(self) -> Test:
        terms = [self.parse_unary()]
        while self.at("keyword", "and") or self.at("op", "&&"):
            self.advance()
            terms.append(self.parse_unary())
        return terms[0] if len(terms) == 1 else _all_of(terms)

    def parse_unary(self) -> Test:
        if self.at("keyword", "not") or self.at("op", "!"):
            token = self.advance()
            self.nest(token.column)
            inner = self.parse_unary()
            self.depth -= 1
            return lambda vars: not inner(vars)
        return self.parse_comparison()

    def parse_comparison(self) -> Test:
        left = self.parse_operand()
        negate = False
        if self.at("keyword", "not") and self.peek_at(1).kind == "keyword" and self.peek_at(1).value in _WORD_OPERATORS:
            self.advance()
            negate = True
        token = self.peek
        is_operator = (token.kind == "op" and token.value in _COMPARISONS) or (
            token.kind == "keyword" and token.value in _WORD_OPERATORS
        )
        if not is_operator:
            return _truthy(left)
        self.advance()
        if self.peek.kind == "end":
            raise RuleSyntaxError(f"expected a value after {token.value!r}", self.peek.column)
        right = self.parse_operand()
        # The tokenizer only produces a /regex/ right after 'matches', so no other
        # operator can meet one.
        if token.value == "matches":
            test = _matches(left, right)
        elif token.value == "in":
            test = _in(left, right)
        elif token.value == "subdomain_of":
            test = _compare(_in_zone, left, right)
        elif token.value in ("==", "!=") and right.kind == "literal" and isinstance(right.value, tuple):
            member = _member_of(right.value, networks=False)   # rulekit: equal to any item
            get_left = _getter(left)
            test = (lambda vars: member(get_left(vars))) if token.value == "==" else (lambda vars: not member(get_left(vars)))
        else:
            test = _compare(_contains if token.value == "contains" else _COMPARISONS[token.value], left, right)
        if negate:
            positive = test
            return lambda vars: not positive(vars)
        return test

    def parse_operand(self) -> _Operand:
        token = self.peek
        if token.kind in ("string", "number", "ip", "bytes"):
            self.advance()
            return _Operand("literal", token.value, token.column)
        if token.kind == "regex":
            self.advance()
            return _Operand("literal", token.value, token.column, is_regex=True)
        if token.kind == "keyword" and token.value in ("true", "false"):
            self.advance()
            return _Operand("literal", token.value == "true", token.column)
        if token.kind == "op" and token.value == "[":
            return self.parse_list()
        if token.kind == "op" and token.value == "(":
            self.advance()
            self.nest(token.column)
            test = self.parse_or()
            self.depth -= 1
            if not self.at("op", ")"):
                raise RuleSyntaxError(f"expected ')' to close the '(' at column {token.column}, found {self.peek.describe()}", self.peek.column)
            self.advance()
            return _Operand("test", test, token.column)
        if token.kind == "name":
            self.advance()
            if self.at("op", "("):
                return self.parse_macro_call(token)
            name = _normalise_variable(token.value)
            self.variables.add(name)
            return _Operand("variable", name, token.column)
        if token.kind == "end":
            raise RuleSyntaxError("the expression ends where a value was expected", token.column)
        raise RuleSyntaxError(f"expected a value, a variable or '(', found {token.describe()}", token.column)

    def parse_list(self) -> _Operand:
        opening = self.advance()
        items: list[object] = []
        while not self.at("op", "]"):
            token = self.advance()
            if token.kind in ("string", "number", "bytes"):
                items.append(token.value)
            elif token.kind == "ip":
                items.append(str(token.value))   # addresses and blocks match as in a quoted list
            elif token.kind == "keyword" and token.value in ("true", "false"):
                items.append(token.value == "true")
            elif token.kind == "end":
                raise RuleSyntaxError(f"the list opened at column {opening.column} is never closed", token.column)
            else:
                raise RuleSyntaxError(f"list items must be literal text, numbers or booleans, found {token.describe()}", token.column)
            if self.at("op", ","):
                self.advance()
            elif not self.at("op", "]"):
                raise RuleSyntaxError(f"expected ',' or ']' in the list, found {self.peek.describe()}", self.peek.column)
        self.advance()
        return _Operand("literal", tuple(items), opening.column)

    def parse_macro_call(self, name_token: _Token) -> _Operand:
        if name_token.value in _FUNCTIONS:
            return self.parse_function_call(name_token)
        self.advance()  # "("
        if not self.at("op", ")"):
            raise RuleSyntaxError(f"macro {name_token.value}() takes no arguments (rulekit macros are zero-argument rules)",
                                  self.peek.column)
        self.advance()
        if "." in name_token.value or "-" in name_token.value:
            raise RuleSyntaxError(f"{name_token.value!r} is not a macro name", name_token.column)
        self.nest(name_token.column)
        test, variables = self.compiler.expand_macro(name_token.value, name_token.column, self.expanding, self.depth)
        self.depth -= 1
        self.variables.update(variables)
        return _Operand("test", test, name_token.column)


    def parse_function_call(self, name_token: _Token) -> _Operand:
        name = name_token.value
        arity, function = _FUNCTIONS[name]
        self.advance()  # "("
        self.nest(name_token.column)
        args: list[Getter] = []
        while not self.at("op", ")"):
            if self.peek.kind == "end":
                raise RuleSyntaxError(f"{name}( is never closed", self.peek.column)
            args.append(_getter(self.parse_operand()))
            if self.at("op", ","):
                self.advance()
            elif not self.at("op", ")"):
                raise RuleSyntaxError(f"expected ',' or ')' in {name}(...), found {self.peek.describe()}", self.peek.column)
        self.advance()
        self.depth -= 1
        if len(args) != arity:
            raise RuleSyntaxError(f"{name}() takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}",
                                  name_token.column)
        if arity == 1:
            (only,) = args
            return _Operand("call", lambda vars: function(only(vars)), name_token.column)
        first, second = args
        return _Operand("call", lambda vars: function(first(vars), second(vars)), name_token.column)


def _text_of(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None if value is None else ("true" if value else "false")
    return value if isinstance(value, str) else str(value)


def _starts_with(value: object, prefix: object) -> bool:
    text, start = _text_of(value), _text_of(prefix)
    return text is not None and start is not None and text.startswith(start)


def _ends_with(value: object, suffix: object) -> bool:
    text, end = _text_of(value), _text_of(suffix)
    return text is not None and end is not None and text.endswith(end)


def _in_zone(value: object, zone: object) -> bool:
    """`in_zone(host, "example.com")`: the host is the zone or a name under it."""
    host, apex = _text_of(value), _text_of(zone)
    if host is None or not apex:
        return False
    host, apex = host.lower().rstrip("."), apex.lower().strip(".")
    return host == apex or host.endswith("." + apex)


def _length(value: object) -> int | None:
    if isinstance(value, (str, list, tuple, set, frozenset)):
        return len(value)
    return None


# name → (number of arguments, function); functions never raise, whatever they are given.
_FUNCTIONS: dict[str, tuple[int, Callable[..., object]]] = {
    "starts_with": (2, _starts_with),
    "ends_with": (2, _ends_with),
    "in_zone": (2, _in_zone),
    "lower": (1, lambda v: v.lower() if isinstance(v, str) else None),
    "upper": (1, lambda v: v.upper() if isinstance(v, str) else None),
    "len": (1, _length),
}


# qtap's older spelling of the request/response variables (its sample configs use them).
_VARIABLE_ALIASES = (("request.", "http.req."), ("response.", "http.res."))


def _normalise_variable(name: str) -> str:
    for old, new in _VARIABLE_ALIASES:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    for prefix in HEADER_PREFIXES:
        if name.startswith(prefix):
            return prefix + name[len(prefix) :].lower()
    return name


# ---------------------------------------------------------------------------------------
# Building closures. The value helpers below never raise, whatever the variables hold.


def _getter(operand: _Operand) -> Getter:
    if operand.kind == "variable":
        name = operand.value
        return lambda vars: vars.get(name)
    if operand.kind in ("test", "call"):
        return operand.value
    constant = operand.value
    return lambda vars: constant


def _truthy(operand: _Operand) -> Test:
    if operand.kind == "test":
        return operand.value
    if operand.kind == "call":
        call = operand.value
        return lambda vars: bool(call(vars))
    if operand.kind == "literal":
        constant = bool(operand.value)
        return lambda vars: constant
    name = operand.value
    return lambda vars: bool(vars.get(name))


def _all_of(tests: list[Test]) -> Test:
    if len(tests) == 2:
        first, second = tests
        return lambda vars: first(vars) and second(vars)
    return lambda vars: all(test(vars) for test in tests)


def _any_of(tests: list[Test]) -> Test:
    if len(tests) == 2:
        first, second = tests
        return lambda vars: first(vars) or second(vars)
    return lambda vars: any(test(vars) for test in tests)


def _compare(op: Callable[[object, object], bool], left: _Operand, right: _Operand) -> Test:
    # Specialise the common shape `variable OP literal` to a single lookup and call.
    if left.kind == "variable" and right.kind == "literal":
        name, constant = left.value, right.value
        return lambda vars: op(vars.get(name), constant)
    get_left, get_right = _getter(left), _getter(right)
    return lambda vars: op(get_left(vars), get_right(vars))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(text: str) -> float | int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _comparable(a: object, b: object) -> tuple[Any, Any] | None:
    """Both values in one comparable form, or None when they cannot be compared."""
    if a is None or b is None:
        return None
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    if _is_number(a) and _is_number(b):
        return a, b
    if _is_number(a) and isinstance(b, str):
        number = _as_number(b)
        return None if number is None else (a, number)
    if isinstance(a, str) and _is_number(b):
        number = _as_number(a)
        return None if number is None else (number, b)
    return None


def _equal(a: object, b: object) -> bool:
    if a is None or b is None:
        return False
    if type(a) is type(b):
        return a == b
    if isinstance(a, bytes) or isinstance(b, bytes):   # a byte string equals text with its bytes
        left, right = (x.encode() if isinstance(x, str) else x for x in (a, b))
        return isinstance(left, bytes) and left == right
    if isinstance(a, (list, tuple)) and not isinstance(b, (list, tuple)):   # a list value: any item
        return any(_equal(item, b) for item in a)
    if isinstance(a, bool) and isinstance(b, str):
        return b.lower() == ("true" if a else "false")
    if isinstance(b, bool) and isinstance(a, str):
        return a.lower() == ("true" if b else "false")
    if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or isinstance(b, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(a) == str(b)
    pair = _comparable(a, b)
    return pair is not None and pair[0] == pair[1]


def _ordering(check: Callable[[Any, Any], bool]) -> Callable[[object, object], bool]:
    def compare(a: object, b: object) -> bool:
        pair = _comparable(a, b)
        return pair is not None and check(pair[0], pair[1])

    return compare


_COMPARISONS: dict[str, Callable[[object, object], bool]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    ">": _ordering(lambda a, b: a > b),
    ">=": _ordering(lambda a, b: a >= b),
    "<": _ordering(lambda a, b: a < b),
    "<=": _ordering(lambda a, b: a <= b),
}


def _contains(a: object, b: object) -> bool:
    if isinstance(a, str):
        return isinstance(b, str) and b in a
    if isinstance(a, bytes):
        needle = b.encode() if isinstance(b, str) else b
        return isinstance(needle, bytes) and needle in a
    if isinstance(a, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        address = _as_ip(b)
        return address is not None and address.version == a.version and address in a
    if isinstance(a, (list, tuple, set, frozenset)):
        return any(_equal(item, b) for item in a)
    return False


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _as_ip(value: object) -> _IPAddress | None:
    if isinstance(value, str):
        try:
            value = ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            return None
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    return None


def _as_network(item: object) -> _IPNetwork | None:
    if not isinstance(item, str) or not item or not (item[0].isdigit() or ":" in item):
        return None
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        return None


def _member_of(items: tuple[object, ...], networks: bool = True) -> Callable[[object], bool]:
    """Membership in a literal list, with addresses matching the CIDR blocks listed (for
    `in`; `==` against a list passes `networks=False`: equality with an item only)."""
    texts = frozenset(item for item in items if isinstance(item, str))
    others = tuple(item for item in items if not isinstance(item, str))
    blocks = tuple(net for net in map(_as_network, items) if net is not None) if networks else ()

    def member(value: object) -> bool:
        if value is None:
            return False
        if isinstance(value, (list, tuple)):   # a list value: any of its items
            return any(member(item) for item in value)
        if isinstance(value, str) and value in texts:
            return True
        if any(_equal(value, item) for item in others):
            return True
        if blocks:
            address = _as_ip(value)
            if address is not None:
                return any(address in net for net in blocks)
        if not isinstance(value, str) and texts:
            return any(_equal(value, item) for item in texts)
        return False

    return member


def _in_value(a: object, b: object) -> bool:
    """`in` against a right side only known at evaluation time."""
    if isinstance(b, str):
        return isinstance(a, str) and a in b
    if isinstance(b, (list, tuple, set, frozenset)):
        return _member_of(tuple(b))(a)
    return False


def _in(left: _Operand, right: _Operand) -> Test:
    if right.kind == "literal" and isinstance(right.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network = right.value
        get_left = _getter(left)

        def inside(vars: Vars) -> bool:
            address = _as_ip(get_left(vars))
            return address is not None and address.version == network.version and address in network

        return inside
    if right.kind == "literal" and isinstance(right.value, tuple):
        member = _member_of(right.value)
        get_left = _getter(left)
        if left.kind == "variable":
            name = left.value
            return lambda vars: member(vars.get(name))
        return lambda vars: member(get_left(vars))
    return _compare(_in_value, left, right)


def _matches(left: _Operand, right: _Operand) -> Test:
    if right.kind != "literal" or not (right.is_regex or isinstance(right.value, str)):
        raise RuleSyntaxError("'matches' needs a /regular expression/ or a quoted pattern", right.column)
    pattern = right.value if right.is_regex else _compile_regex(right.value, 0, right.column)
    search = pattern.search

    def matches(value: object) -> bool:
        if isinstance(value, str):
            return search(value) is not None
        if _is_number(value):
            return search(str(value)) is not None
        return False

    if left.kind == "variable":
        name = left.value
        return lambda vars: matches(vars.get(name))
    get_left = _getter(left)
    return lambda vars: matches(get_left(vars))
