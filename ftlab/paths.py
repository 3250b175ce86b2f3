"""Where ftlab keeps its files (runs under FTLAB_HOME, downloads under FTLAB_DATA), and its
environment settings.

Every setting is read when it is used, never at import, so a bad value cannot break a command
that does not need it; ``setting_problems`` checks them all at once before a run starts. A
value ftlab cannot use raises ``SettingError``, whose message names the variable, its value
and what it takes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class SettingError(ValueError):
    """An environment setting ftlab cannot use, in words that say what it takes."""


class StoreError(Exception):
    """The run store cannot be used: FTLAB_HOME or the files under it. The message says what
    is wrong and what to do; ``kind`` names the fault for a caller that offers a remedy
    ("home", "damaged", "layout", "readonly", "full", "locked", "unavailable", "training", "other")."""

    def __init__(self, message: str, kind: str = "other"):
        super().__init__(message)
        self.kind = kind


def home() -> Path:
    """Run records and checkpoints (``FTLAB_HOME``, default ``./.ftlab``)."""
    value = os.environ.get("FTLAB_HOME")
    if value is None:
        return Path(".ftlab")
    if not value.strip():  # Path("") is the current folder: runs.db would land wherever ftlab starts
        raise StoreError("FTLAB_HOME is set but empty: set it to the folder for ftlab's runs (e.g. "
                         "FTLAB_HOME=$HOME/.ftlab), or unset it to use ./.ftlab", "home")
    try:
        return _looked_up(value)
    except SettingError as err:
        raise StoreError(f"FTLAB_HOME {err}: set it to the folder for ftlab's runs, or unset it to use ./.ftlab",
                         "home") from None


def _looked_up(value: str) -> Path:
    """``value`` as a path the OS can look up; SettingError (saying why) for one it refuses outright
    (a name too long, ``~nobody``), which would otherwise be a traceback wherever it is first used."""
    try:
        path = Path(value).expanduser()
        path.exists()
    except (OSError, RuntimeError) as err:
        raise SettingError(f"({value[:60]!r}{'…' if len(value) > 60 else ''}) cannot be used as a path "
                           f"({getattr(err, 'strerror', None) or err})") from None
    return path


def data_dir() -> Path:
    """Downloaded and unpacked data sets (``FTLAB_DATA``, default ``FTLAB_HOME/data``)."""
    env = os.environ.get("FTLAB_DATA")
    if not env:
        return home() / "data"
    try:
        path = _looked_up(env)
    except SettingError as err:
        raise SettingError(f"FTLAB_DATA {err}: it takes the folder for downloaded and unpacked data sets "
                           "(default FTLAB_HOME/data). Set it to a folder or unset it.") from None
    if not env.strip() or (path.exists() and not path.is_dir()):
        what = "is not a folder" if env.strip() else "is blank"
        raise SettingError(f"FTLAB_DATA={env!r} {what}: it takes the folder for downloaded and unpacked data sets "
                           "(default FTLAB_HOME/data). Set it to a folder or unset it.")
    return path


def offline() -> bool:
    """True when ``FTLAB_OFFLINE`` is set: downloads fail at once with the offline message."""
    raw = os.environ.get("FTLAB_OFFLINE", "")
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise SettingError(f"FTLAB_OFFLINE={raw!r} is neither on nor off: it takes 1, true, yes or on (no "
                           "downloads), or 0, false, no, off or nothing (downloads allowed).")
    return value in _TRUE


def number(name: str, default: float, what: str, *, lo: float = 0.0, whole: bool = False) -> float:
    """The setting ``name`` as a finite number ``>= lo`` (``> 0`` when ``lo`` is 0), or ``default`` when unset.

    >>> os.environ["FTLAB_EXAMPLE"] = "1e3"; number("FTLAB_EXAMPLE", 5, "an example", whole=True)
    1000
    >>> os.environ["FTLAB_EXAMPLE"] = "abc"; number("FTLAB_EXAMPLE", 5, "an example")
    Traceback (most recent call last):
    ...
    ftlab.paths.SettingError: FTLAB_EXAMPLE='abc' cannot be used: it takes a number greater than 0 (an example; default 5). Change it or unset it.
    >>> del os.environ["FTLAB_EXAMPLE"]
    """
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value >= lo if lo else value > 0) and (not whole or value == int(value))
    if not ok:
        kind = "a whole number" if whole else "a number"
        bound = f"of at least {lo:,g}" if lo else "greater than 0"
        shown = f"{default:,.0f}" if default == int(default) else f"{default:,g}"
        raise SettingError(f"{name}={raw!r} cannot be used: it takes {kind} {bound} ({what}; default {shown}). "
                           "Change it or unset it.")
    return int(value) if whole else value


def max_pixels() -> int:
    """Pixels one image may have before it is refused as a decompression bomb (``FTLAB_MAX_PIXELS``)."""
    return number("FTLAB_MAX_PIXELS", 100_000_000, "pixels one image may have", lo=1, whole=True)


def zip_limits() -> dict[str, float]:
    """What an uploaded .zip may unpack to (``FTLAB_ZIP_MAX_MB``, ``FTLAB_ZIP_MAX_FILES``, ``FTLAB_ZIP_MAX_RATIO``)."""
    return {"max_total_mb": number("FTLAB_ZIP_MAX_MB", 4096, "MB a .zip may unpack to"),
            "max_members": number("FTLAB_ZIP_MAX_FILES", 200_000, "files a .zip may hold", lo=1, whole=True),
            # images barely compress; 200:1 is a bomb
            "max_ratio": number("FTLAB_ZIP_MAX_RATIO", 200, "how many times its packed size a .zip member may "
                                "unpack to", lo=1)}


def setting_problems() -> list[str]:
    """Every environment setting ftlab cannot use, each a sentence (empty when all are fine)."""
    problems = []
    for read in (data_dir, offline, max_pixels, zip_limits):
        try:
            read()
        except SettingError as err:
            problems.append(str(err))
    return problems
