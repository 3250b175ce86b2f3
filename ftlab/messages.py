"""Lists inside messages: a few items by name and how many more, so that a message about
2,000 classes stays a sentence (it was 26 KB)."""
from __future__ import annotations

from collections.abc import Iterable


def some(items: Iterable[object], shown: int = 10) -> str:
    """The first ``shown`` items and the count of the rest; every item when there are few.

    Names that hold bytes which are not UTF-8 (file names read with ``surrogateescape``) are
    written with backslash escapes, so the message prints and displays anywhere.

    >>> some(["cat", "dog", "emu"])
    'cat, dog, emu'
    >>> some([f"class{i}" for i in range(2000)], shown=2)
    'class0, class1, … and 1,998 more'
    """
    names = [printable(str(i)) for i in items]
    if len(names) <= shown + 1:  # "and 1 more" is longer than the one name
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, … and {len(names) - shown:,} more"


def printable(text: str) -> str:
    r"""``text`` with bytes that are not UTF-8 written as escapes.

    >>> printable("caf\udce9"), printable("ok")
    ('caf\\xe9', 'ok')
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes a file name had on disk
    except UnicodeEncodeError:  # a lone surrogate that no decoding made
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")
