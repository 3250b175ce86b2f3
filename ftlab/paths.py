"""Where ftlab keeps its files: runs under FTLAB_HOME, downloads under FTLAB_DATA."""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Run records and checkpoints (``FTLAB_HOME``, default ``./.ftlab``)."""
    value = os.environ.get("FTLAB_HOME")
    if value is None:
        return Path(".ftlab")
    if not value.strip():  # Path("") is the current folder: runs.db would land wherever ftlab starts
        raise StoreError("FTLAB_HOME is set but empty: set it to the folder for ftlab's runs (e.g. "
                         "FTLAB_HOME=$HOME/.ftlab), or unset it to use ./.ftlab", "home")
    return Path(value).expanduser()


def data_dir() -> Path:
    """Downloaded and unpacked data sets (``FTLAB_DATA``, default ``FTLAB_HOME/data``)."""
    env = os.environ.get("FTLAB_DATA")
    return Path(env).expanduser() if env else home() / "data"


def offline() -> bool:
    """True when ``FTLAB_OFFLINE`` is set: downloads fail at once with the offline message."""
    return os.environ.get("FTLAB_OFFLINE", "").strip() not in ("", "0", "false", "no")


class StoreError(Exception):
    """The run store cannot be used: FTLAB_HOME or the files under it. The message says what
    is wrong and what to do; ``kind`` names the fault for a caller that offers a remedy
    ("home", "damaged", "layout", "readonly", "full", "locked", "unavailable", "training", "other")."""

    def __init__(self, message: str, kind: str = "other"):
        super().__init__(message)
        self.kind = kind
