"""Lists inside messages: a few items by name and how many more, so that a message about
2,000 classes stays a sentence (it was 26 KB)."""
from __future__ import annotations

import unicodedata
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
    """``text`` as valid UTF-8 that any terminal or page can show: bytes of a file name that are not
    UTF-8 become ``\\xff`` escapes, control characters (newlines, ESC) ``\\n``, ``\\x1b``.

    >>> printable("caf\\udcff"), printable("a\\nb"), printable("Bienen 🐝")
    ('caf\\\\xff', 'a\\\\nb', 'Bienen 🐝')
    """
    # On POSIX the bytes of a name that are not UTF-8 arrive as lone surrogates (surrogateescape)
    try:
        decoded = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name makes: shown as its escape
        decoded = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if decoded.isprintable():
        return decoded
    return "".join(c.encode("unicode_escape").decode("ascii") if _hidden(c) else c for c in decoded)


def _hidden(c: str) -> bool:
    """Control and format characters (newline, ESC, right-to-left override), the emoji joiner excepted."""
    return unicodedata.category(c) in ("Cc", "Cf", "Cs") and c not in (" ", "\u200d")
