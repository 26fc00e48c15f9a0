"""parse_size: byte sizes as people write them."""

from __future__ import annotations

import pytest

from plaintap.config import parse_size


@pytest.mark.parametrize(
    ("written", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("100", 100),
        ("100b", 100),
        ("512kb", 512 * 1024),
        ("512k", 512 * 1024),
        ("512KiB", 512 * 1024),
        ("2mb", 2097152),
        ("2 mb", 2097152),
        ("10MB", 10 * 1024 * 1024),
        ("1gib", 1 << 30),
        ("1G", 1 << 30),
        ("1tb", 1 << 40),
        (" 2mb ", 2097152),
        ("1.5mb", 1572864),
    ],
)
def test_sizes(written: int | str, size: int) -> None:
    assert parse_size(written) == size


@pytest.mark.parametrize("written", ["", "mb", "2 parsecs", "-1", -1, "2mbb", "1e6", "0x10", "2.mb", True, 1.5, None, [2]])
def test_not_sizes(written: object) -> None:
    with pytest.raises(ValueError, match=r"^invalid size"):
        parse_size(written)  # type: ignore[arg-type]


def test_message_says_what_is_accepted() -> None:
    with pytest.raises(ValueError) as caught:
        parse_size("2 parsecs")
    assert str(caught.value) == "invalid size '2 parsecs': expected a number of bytes or a number with kb, mb, gb or tb (e.g. 512kb, 2mb)"
