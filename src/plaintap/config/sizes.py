"""Byte sizes as people write them: `2mb`, `512kb`, `1GiB`, `2 mb`, `100` (bytes).

Used for `--http-buffer-size` and any size in the configuration. Units are binary
whatever their spelling (kb = kib = 1024), as qtap reads them.
"""

from __future__ import annotations

import re

__all__ = ["parse_size"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>(?:[kmgt](?:i?b)?|b)?)", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes in `value`: an int, or text such as "512kb", "2 MB", "1gib", "100".

    Raises ValueError saying what is accepted when `value` is not a size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid size {value}: a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: expected a number of bytes or text such as 512kb, 2mb, 1gb")
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size {value!r}: expected a number of bytes or a number with kb, mb, gb or tb (e.g. 512kb, 2mb)")
    multiplier = _UNITS[match["unit"][:1].lower()]
    return int(float(match["number"]) * multiplier) if "." in match["number"] else int(match["number"]) * multiplier
