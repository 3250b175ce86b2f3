"""Every run kept: records in SQLite, best checkpoints as files, under ``FTLAB_HOME``.

Records change only inside SQLite transactions and checkpoints are written to a
temporary file that is flushed and renamed over the old one, so a crash at any point
leaves the previous good state. Checkpoints hold tensors, numbers, strings, lists and
dicts only, and load with ``weights_only=True``: nothing in them is unpickled as code.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab import paths

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,            -- running, finished, stopped, failed, interrupted
    dataset TEXT NOT NULL,
    backbone TEXT NOT NULL,
    strategy TEXT NOT NULL,
    config TEXT NOT NULL,            -- JSON of TrainConfig
    classes TEXT NOT NULL,           -- JSON list
    split TEXT NOT NULL,             -- JSON of Split.to_dict()
    summary TEXT NOT NULL DEFAULT '{}',   -- JSON: the CLI's --json summary
    final TEXT NOT NULL DEFAULT '{}',     -- JSON: confusion matrices and reports of the best model
    message TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT ''   -- host:pid of the process training it
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""


@dataclass(frozen=True)
class RunRecord:
    id: str
    created: float
    updated: float
    status: str
    dataset: str
    backbone: str
    strategy: str
    config: dict
    classes: list
    split: dict
    summary: dict
    final: dict
    message: str


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != "" and host != socket.gethostname()  # another machine's run: not ours to judge
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RunStore:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.db = self.home / "runs.db"
        with self._tx() as con:
            con.executescript(_SCHEMA)

    @contextmanager
    def _tx(self):
        # one connection per call: the store is used from the app's threads and the CLI at once
        con = sqlite3.connect(self.db, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA foreign_keys=ON")
            with con:  # commits, or rolls back on an exception
                yield con
        finally:
            con.close()

    # --- records --------------------------------------------------------------------
    def create(self, run_id: str, config: dict) -> None:
        """A new record, status 'running'; classes and split follow once the data is read."""
        now = time.time()
        with self._tx() as con:
            con.execute("INSERT INTO runs (id, created, updated, status, dataset, backbone, strategy, config, "
                        "classes, split, owner) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, '[]', '{}', ?)",
                        (run_id, now, now, config["dataset"], config["backbone"], config["strategy"],
                         json.dumps(config), _owner()))

    def set_data(self, run_id: str, classes: list, split: dict) -> None:
        with self._tx() as con:
            con.execute("UPDATE runs SET classes = ?, split = ?, updated = ? WHERE id = ?",
                        (json.dumps(list(classes)), json.dumps(split), time.time(), run_id))

    def add_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                        (run_id, epoch, json.dumps(metrics)))
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def finish(self, run_id: str, status: str, summary: dict, final: dict | None = None, message: str = "") -> None:
        with self._tx() as con:
            con.execute("UPDATE runs SET status = ?, summary = ?, final = ?, message = ?, updated = ? WHERE id = ?",
                        (status, json.dumps(summary), json.dumps(final or {}), message, time.time(), run_id))

    def mark_interrupted(self) -> int:
        """Mark runs left 'running' by a process that no longer exists as interrupted.

        Runs of a live process (the CLI in another terminal, this app) are left alone, so
        the app can call this at every start.
        """
        with self._tx() as con:
            rows = con.execute("SELECT id, owner FROM runs WHERE status = 'running'").fetchall()
            dead = [(rid,) for rid, owner in rows if not _alive(owner)]
            con.executemany("UPDATE runs SET status = 'interrupted', message = 'the process training it ended "
                            "before the run did (a restart or a crash); its best checkpoint is kept' "
                            "WHERE id = ? AND status = 'running'", dead)
            return len(dead)

    def list(self) -> list[RunRecord]:
        with self._tx() as con:
            rows = con.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        return [self._record(r) for r in rows]

    def get(self, run_id: str) -> RunRecord:
        with self._tx() as con:
            try:
                row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            except UnicodeEncodeError:  # an undecodable byte from the command line: no run has that id
                row = None
        if row is None:
            raise KeyError(f"no run {run_id!r} in {self.home}; `python -m ftlab runs` lists them")
        return self._record(row)

    def epochs(self, run_id: str) -> list[dict]:
        with self._tx() as con:
            rows = con.execute("SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)).fetchall()
        return [json.loads(m) for (m,) in rows]

    def delete(self, run_id: str) -> None:
        self.get(run_id)
        with self._tx() as con:
            con.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        (rid, created, updated, status, dataset, backbone, strategy, config, classes, split, summary, final,
         message, _owner_) = row
        return RunRecord(rid, created, updated, status, dataset, backbone, strategy, json.loads(config),
                         json.loads(classes), json.loads(split), json.loads(summary), json.loads(final), message)

    # --- checkpoints ----------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def checkpoint_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "best.pt"

    def save_checkpoint(self, run_id: str, checkpoint: dict) -> Path:
        """Write atomically: a temporary file, flushed to disk, renamed over the old one."""
        target = self.checkpoint_path(run_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def load_checkpoint(self, run_id: str) -> dict:
        path = self.checkpoint_path(run_id)
        if not path.is_file():
            raise CheckpointError(f"run {run_id} has no checkpoint (it may have stopped before its first epoch)")
        return load_checkpoint_file(path)


def load_checkpoint_file(path: Path) -> dict:
    try:
        with closing(open(path, "rb")) as fh:
            checkpoint = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else err.__class__.__name__
        raise CheckpointError(f"{path} could not be loaded safely: {first}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "backbone" not in checkpoint:
        raise CheckpointError(f"{path} is not an ftlab checkpoint")
    return checkpoint
