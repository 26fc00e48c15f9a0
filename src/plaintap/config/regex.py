"""Regular expressions written by users and run on text other processes control.

Rule `matches` (`http.req.path matches /…/`) runs on request lines and headers any local
process or remote peer can shape, and `tap.filters` `strategy: regex` on executable paths
any local user can choose. A backtracking engine (Python's `re`) can take exponential
time on such text with patterns like `(a+)+$`, stalling the capture loop. So these are
compiled with RE2 (`google-re2`), whose matching time is linear in the input, with a
bounded compiled-program size.

What RE2 does not have, and is refused at load time with the engine's reason:
backreferences (`\\1`), lookahead/lookbehind (`(?=…)`, `(?<!…)`), possessive and atomic
groups, conditionals. Character classes such as `\\d` and `\\w` are ASCII-only.
"""
from __future__ import annotations

import re2

__all__ = ["ENGINE", "MAX_PROGRAM_BYTES", "RegexError", "compile_regex"]

ENGINE = "re2"
MAX_PROGRAM_BYTES = 1 << 20   # RE2's memory budget for one compiled pattern


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message is RE2's reason."""


def compile_regex(pattern: str, *, ignore_case: bool = False, multiline: bool = False, dot_all: bool = False):
    """Compile `pattern` with RE2. The result has `.search(text)` (a match or None),
    like `re.Pattern`. Raises RegexError."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PROGRAM_BYTES
    options.case_sensitive = not ignore_case
    options.dot_nl = dot_all
    flags = "(?m)" if multiline else ""
    try:
        return re2.compile(flags + pattern, options=options)
    except re2.error as err:
        reason = err.args[0] if err.args else str(err)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(str(reason)) from None
    except (TypeError, ValueError) as err:
        raise RegexError(str(err)) from None
