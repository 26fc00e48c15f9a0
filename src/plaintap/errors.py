"""Errors meant for people: the command line prints their message as one line and exits
non-zero, with no traceback (unless --log-level debug)."""
from __future__ import annotations


class UserError(Exception):
    """Something a person can fix; the message says what is wrong and what to do."""
