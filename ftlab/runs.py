"""Every run kept: records in SQLite, best checkpoints as files, under ``FTLAB_HOME``.

Records change only inside SQLite transactions and checkpoints are written to a
temporary file that is flushed and renamed over the old one, so a crash at any point
leaves the previous good state. Checkpoints hold tensors, numbers, strings, lists and
dicts only, and load with ``weights_only=True``: nothing in them is unpickled as code.

Every fault of the store (a damaged or foreign database, a read-only or full disk, a lock
held too long) is a `StoreError` whose message says what to do. Reading never writes: a
read-only store lists its runs and predicts. A damaged store is never changed; it is
moved aside only by `RunStore.move_aside`, when the user asks.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ftlab import paths
from ftlab.errors import CheckpointError  # not ftlab.checkpoints: listing runs needs no torch
from ftlab.messages import printable
from ftlab.paths import StoreError  # noqa: F401  (raised here; callers import it from ftlab.runs)

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
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,             -- as a run id
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,            -- running | finished | stopped | failed
    plan TEXT NOT NULL,              -- JSON: its members (run id, strategy, seed), groups, base config
    message TEXT NOT NULL DEFAULT ''
);
"""


_COLUMNS = ("id", "created", "updated", "status", "dataset", "backbone", "strategy", "config", "classes", "split",
            "summary", "final", "message")
# the JSON columns and the type each must parse to
_JSON = {"config": dict, "classes": list, "split": dict, "summary": dict, "final": dict}
RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")  # what new_run_id makes, and nothing else
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's lock before it gives up
HEARTBEAT_S = 60.0  # how often a training process marks its runs as alive (their `updated`)
STALE_S = 600.0  # another machine's run unmarked for this long is taken as ended (its process was killed)
_TRAINING: dict[str, Path] = {}  # runs this process is training now -> their store's database
_TRAINING_LOCK = threading.Lock()
_HEARTBEAT: list[threading.Thread] = []


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


def _start_time(pid: int) -> str:
    """When process ``pid`` started (Linux clock ticks), so a reused pid is not taken for the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _alive(owner: str, run_id: str | None = None, updated: object = None) -> bool:
    """Whether the process named by ``owner`` (host:pid[:start]) is still training ``run_id``.
    Another machine's process cannot be asked: its run is alive while its heartbeat is recent."""
    host, pid, start = (owner.split(":") + ["", ""])[:3]
    # a pid as ps writes it: not 0 (the caller's own group), not "²" or 20 digits (no int, no C pid_t)
    if host != socket.gethostname() or not re.fullmatch(r"[1-9][0-9]{0,8}", pid):
        if host == "" or host == socket.gethostname():
            return False
        return not isinstance(updated, (int, float)) or time.time() - updated < STALE_S
    if int(pid) == os.getpid() and start in ("", _start_time(os.getpid())):
        # this process: the run is training while its trainer has not ended (an app keeps running after)
        return run_id is None or run_id in _TRAINING
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _start_time(int(pid)) in ("", start)


def beat() -> None:
    """Mark every run this process trains as alive now (the heartbeat thread calls this)."""
    with _TRAINING_LOCK:
        beating = list(_TRAINING.items())
    for run_id, db in beating:
        with suppress(sqlite3.Error, OSError, ValueError):
            # mode=rw: a store deleted meanwhile is not made again as an empty file
            con = sqlite3.connect(db.resolve().as_uri() + "?mode=rw", uri=True, timeout=5)
            try:
                with con:
                    con.execute("UPDATE runs SET updated = ? WHERE id = ? AND status = 'running'",
                                (time.time(), run_id))
            finally:
                con.close()


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        beat()


def _text(value: object) -> str:
    """``value`` as text SQLite can store: a file name's bytes that are not UTF-8 become escapes
    (the exact value stays in the JSON columns, which escape it themselves)."""
    return printable(str(value))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def check_run_id(run_id: object) -> str:
    """``run_id`` if it has the form `new_run_id` makes; a KeyError saying so otherwise. A run is
    found by its id in the store, never by a path: no id names a folder outside the store."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        shown = ascii(run_id) if isinstance(run_id, str) else type(run_id).__name__
        shown = shown if len(shown) <= 60 else shown[:56] + "...'"  # a huge value, cut with its quote closed
        raise KeyError(f"{shown} is not a run id: run ids look like 20250101-120000-a1b2c3; "
                       "`python -m ftlab runs` lists them")
    return run_id


def _free(path: Path) -> str:
    """Free space on the disk holding ``path`` (or its nearest existing parent), in words."""
    for p in (path, *path.parents):
        with suppress(OSError):
            if p.exists():
                return f"{shutil.disk_usage(p).free / 2**20:,.0f} MB free"
    return "free space unknown"


def _write_atomically(target: Path, write) -> None:
    """``write(fh)`` into a temporary file beside ``target``, flushed to disk, renamed over it: a write
    that fails (a full disk) leaves the previous file and no temporary one."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


class RunStore:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self.db = self.home / "runs.db"
        self.timeout = BUSY_TIMEOUT_S
        self._ready = False  # tables made (by the first write; reading never creates them)
        nearest = next((p for p in (self.home, *self.home.parents) if os.path.lexists(p)), None)
        if nearest is not None and not nearest.is_dir():
            where = "" if nearest == self.home else f" cannot be made: {nearest}"
            raise StoreError(f"FTLAB_HOME ({self.home}){where} is a file, not a folder: point FTLAB_HOME at a folder "
                             "for ftlab's runs", "home")
        if self.db.exists() and not self.db.is_file():
            raise StoreError(f"{self.db} is a folder, not ftlab's run store: move it away, or point FTLAB_HOME "
                             "elsewhere", "home")

    # --- the database -----------------------------------------------------------------
    def _connect(self, write: bool) -> sqlite3.Connection:
        if write:
            return sqlite3.connect(self.db, timeout=self.timeout)
        uri = self.db.resolve().as_uri() + "?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.Error as err:
            con.close()
            if "unable to open" not in str(err) or os.access(self.home, os.W_OK):
                raise
            # a WAL store in a read-only folder: SQLite cannot make the shared-memory file it reads
            # through; nobody can write there either, so read the file as it is
            return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=self.timeout)

    @contextmanager
    def _tx(self, write: bool = False):
        """A connection in a transaction (committed, or rolled back on an exception); every
        SQLite error leaves as a StoreError. One connection per call: the app's threads and
        other processes use the store at once."""
        try:
            if write and not self._ready:
                self._make_tables()
            con = self._connect(write)
            try:
                con.row_factory = sqlite3.Row
                if write:
                    con.execute("PRAGMA foreign_keys=ON")
                with con:
                    yield con
            finally:
                con.close()
        except sqlite3.Error as err:
            raise self._fault(err, write) from None

    def _make_tables(self) -> None:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._os_fault(err, self.home) from None
        con = sqlite3.connect(self.db, timeout=self.timeout)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            if "owner" not in have and set(_COLUMNS) <= have:  # a store from before runs named their process
                with con:
                    con.execute("ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                have.add("owner")
        finally:
            con.close()
        if missing := [c for c in (*_COLUMNS, "owner") if c not in have]:
            raise StoreError(f"{self.db} is not laid out as ftlab's run store (table runs has no column "
                             f"{', '.join(missing)}): {self._remedy()}", "layout")
        self._ready = True

    def _remedy(self) -> str:
        return ("ftlab leaves it as it is. Move it aside with `python -m ftlab runs --move-aside` (or the button "
                "on the Runs page) to start an empty store, or point FTLAB_HOME at another folder")

    def _fault(self, err: sqlite3.Error, write: bool) -> StoreError:
        text = str(err)
        low = text.lower()
        if "not a database" in low or "malformed" in low or "encrypted" in low or (
                isinstance(err, sqlite3.DatabaseError) and not isinstance(err, (sqlite3.OperationalError,
                                                                                sqlite3.IntegrityError))):
            return StoreError(f"the run store {self.db} is damaged ({text}). {self._remedy()}", "damaged")
        if "no such column" in low or "has no column" in low or "no such table" in low:
            return StoreError(f"{self.db} is not laid out as ftlab's run store ({text}). {self._remedy()}", "layout")
        if "full" in low or "disk i/o" in low:
            return StoreError(f"the run store {self.db} could not be written: the disk is full or failing "
                              f"({_free(self.home)}). Free some space and try again", "full")
        if "locked" in low or "busy" in low:
            return StoreError(f"the run store {self.db} stayed locked by another process for {self.timeout:g} s; "
                              "try again when it has finished writing", "locked")
        if write and ("readonly" in low or "read-only" in low or "unable to open" in low) and (
                not os.access(self.home, os.W_OK) or "readonly" in low):
            return StoreError(f"the run store in {self.home} cannot be written (the folder or file is read-only): "
                              "listing runs and predicting work, but training and deleting need a writable "
                              "FTLAB_HOME", "readonly")
        if "foreign key" in low:
            return StoreError("the run's record was deleted from the store while it was being written to (by "
                              "another process or session)", "other")
        if "unable to open" in low:
            return StoreError(f"the run store {self.db} cannot be opened ({text}): FTLAB_HOME ({self.home}) must be "
                              "a folder you can read", "unavailable")
        return StoreError(f"the run store {self.db} failed: {err.__class__.__name__}: {text}", "other")

    def _os_fault(self, err: OSError, where: Path) -> StoreError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(f"the disk is full at {where} ({_free(where)}): free some space and try again", "full")
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(f"{where} cannot be written ({err.strerror}): point FTLAB_HOME at a writable folder",
                              "readonly")
        if isinstance(err, (NotADirectoryError, FileExistsError)):
            return StoreError(f"{where} cannot be made: a part of it is a file, not a folder; point FTLAB_HOME at "
                              "a folder", "home")
        return StoreError(f"{where} cannot be written ({err.strerror or err})", "other")

    def _read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Rows of a query, without writing anything: no store file yet means no rows."""
        if not self.db.exists():
            return []
        try:
            with self._tx() as con:
                return con.execute(sql, params).fetchall()
        except StoreError as err:
            if err.kind == "layout" and "no such table" in str(err) and not self._has_tables():
                return []  # an empty file: a store whose tables the first write makes
            raise

    def _has_tables(self) -> bool:
        with self._tx() as con:
            return bool(con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall())

    # --- records --------------------------------------------------------------------
    def create(self, run_id: str, config: dict) -> None:
        """A new record, status 'running'; classes and split follow once the data is read."""
        check_run_id(run_id)
        now = time.time()
        with self._tx(write=True) as con:
            con.execute("INSERT INTO runs (id, created, updated, status, dataset, backbone, strategy, config, "
                        "classes, split, owner) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, '[]', '{}', ?)",
                        (run_id, now, now, _text(config["dataset"]), _text(config["backbone"]),
                         _text(config["strategy"]), json.dumps(config), _owner()))
        with _TRAINING_LOCK:
            _TRAINING[run_id] = self.db
            if not _HEARTBEAT:  # one thread per process, for all its runs
                _HEARTBEAT.append(threading.Thread(target=_heartbeat, name="ftlab-heartbeat", daemon=True))
                _HEARTBEAT[0].start()

    def set_data(self, run_id: str, classes: list, split: dict) -> None:
        with self._tx(write=True) as con:
            con.execute("UPDATE runs SET classes = ?, split = ?, updated = ? WHERE id = ?",
                        (json.dumps(list(classes)), json.dumps(split), time.time(), run_id))

    def add_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        with self._tx(write=True) as con:
            con.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                        (run_id, epoch, json.dumps(metrics)))
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def finish(self, run_id: str, status: str, summary: dict, final: dict | None = None, message: str = "") -> None:
        try:
            with self._tx(write=True) as con:
                con.execute("UPDATE runs SET status = ?, summary = ?, final = ?, message = ?, updated = ? "
                            "WHERE id = ?", (status, json.dumps(summary), json.dumps(final or {}), _text(message),
                                             time.time(), run_id))
        finally:
            self.release(run_id)

    @staticmethod
    def release(run_id: str) -> None:
        """This process no longer trains ``run_id`` (a record still 'running' is then interrupted)."""
        with _TRAINING_LOCK:
            _TRAINING.pop(run_id, None)

    def mark_interrupted(self) -> int:
        """Mark runs left 'running' by a process that no longer trains them as interrupted.

        Runs of a live process (the CLI in another terminal, this app) are left alone, so
        the app can call this at every start. A store that cannot be written now (read-only,
        full, locked) is left as it is: the runs show as running elsewhere until it can.
        """
        rows = self._read("SELECT * FROM runs WHERE status = 'running'")  # *: a store from before owners has none
        owner = lambda row: str(row["owner"] or "") if "owner" in row.keys() else ""  # noqa: E731
        dead = [(row["id"],) for row in rows if not _alive(owner(row), row["id"], row["updated"])]
        if not dead:
            return 0
        try:
            with self._tx(write=True) as con:
                con.executemany("UPDATE runs SET status = 'interrupted', message = 'the process training it ended "
                                "before the run did (a restart or a crash); its best checkpoint is kept' "
                                "WHERE id = ? AND status = 'running'", dead)
        except StoreError as err:
            if err.kind in ("readonly", "full", "locked"):
                return 0
            raise
        return len(dead)

    def running_owners(self) -> dict[str, str]:
        """run id -> owner (host:pid[:start] of its trainer) of the runs kept as running, read-only;
        a store from before runs named their process (no such column) gives {}."""
        try:
            rows = self._read("SELECT id, owner FROM runs WHERE status = 'running'")
        except StoreError:
            return {}
        return {str(row["id"]): str(row["owner"] or "") for row in rows}

    def adopt(self, record: dict, epochs: list[dict], files: dict[str, bytes]) -> None:
        """Keep a run trained elsewhere (a Ray worker's own store): ``record`` as `RunRecord` fields,
        its epoch records in order and the files of its folder (name -> bytes). The files first, each
        written atomically, then the record and its epochs in one transaction, so a record never
        points at a half-written checkpoint; a record of the same id (the live copy this process kept
        while the run trained) is replaced, epochs and all."""
        run_id = check_run_id(record.get("id"))
        folder = self.run_dir(run_id)
        for name, data in files.items():
            target = folder / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise StoreError(f"run {run_id} came back with a file outside its folder ({name!r}): not kept")
            try:
                _write_atomically(target, lambda fh, data=data: fh.write(data))
            except OSError as err:
                raise self._checkpoint_fault(err, target, None) from None
        values = [record.get(c) for c in _COLUMNS]
        values = [json.dumps(v) if c in _JSON else _text(v) if isinstance(v, str) else v
                  for c, v in zip(_COLUMNS, values)]
        with self._tx(write=True) as con:
            con.execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}, owner) VALUES ({', '.join('?' * len(_COLUMNS))}, '') "
                        f"ON CONFLICT(id) DO UPDATE SET "
                        + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:]) + ", owner = ''", values)
            con.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            con.executemany("INSERT INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                            [(run_id, int(m.get("epoch", i + 1)), json.dumps(m)) for i, m in enumerate(epochs)])
        self.release(run_id)

    def list(self) -> list[RunRecord]:
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM runs ORDER BY created DESC")
        return [self._record(r) for r in rows]

    def get(self, run_id: str) -> RunRecord:
        check_run_id(run_id)
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise self._unknown(run_id)
        return self._record(rows[0])

    def _unknown(self, run_id: str) -> KeyError:
        return KeyError(f"unknown run {run_id}: there is no such run in {self.home}; `python -m ftlab runs` lists them")

    def exists(self, run_id: str) -> bool:
        try:
            self.get(run_id)
        except KeyError:
            return False
        return True

    def epochs(self, run_id: str) -> list[dict]:
        """The run's epoch records in order; a record that does not parse is left out."""
        rows = self._read("SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        out = []
        for row in rows:
            with suppress(TypeError, ValueError):
                if isinstance(m := json.loads(row["metrics"]), dict):
                    out.append(m)
        return out

    # --- sweeps: a plan of member runs; the members are ordinary runs whose config names the sweep ----------
    def create_sweep(self, sweep_id: str, plan: dict) -> None:
        check_run_id(sweep_id)
        now = time.time()
        with self._tx(write=True) as con:
            con.execute("INSERT INTO sweeps (id, created, updated, status, plan) VALUES (?, ?, ?, 'running', ?)",
                        (sweep_id, now, now, json.dumps(plan)))

    def finish_sweep(self, sweep_id: str, status: str, message: str = "") -> None:
        with self._tx(write=True) as con:
            con.execute("UPDATE sweeps SET status = ?, message = ?, updated = ? WHERE id = ?",
                        (status, message, time.time(), sweep_id))

    def sweeps(self) -> list[dict]:
        """Every sweep, newest first: {id, created, updated, status, plan, message}."""
        out = []
        try:
            rows = self._read("SELECT id, created, updated, status, plan, message FROM sweeps ORDER BY created DESC")
        except StoreError as err:  # a store from before sweeps: its first write adds the table
            if "no such table" in str(err):
                return []
            raise
        for row in rows:
            with suppress(TypeError, ValueError):
                plan = json.loads(row["plan"])
                if isinstance(plan, dict):
                    out.append({**{k: row[k] for k in ("id", "created", "updated", "status", "message")},
                                "plan": plan})
        return out

    def sweep(self, sweep_id: str) -> dict:
        check_run_id(sweep_id)
        found = [s for s in self.sweeps() if s["id"] == sweep_id]
        if not found:
            raise KeyError(f"unknown sweep {sweep_id}: there is no such sweep in {self.home}; `python -m ftlab sweep "
                           "--list` lists them")
        return found[0]

    def delete(self, run_id: str) -> None:
        """Delete a run's record, epochs and checkpoint; refused while it trains, in any process."""
        self.get(run_id)  # an unknown run is said before any write: a missing store is not made for it
        with self._tx(write=True) as con:
            row = con.execute("SELECT status, owner, updated FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise self._unknown(run_id)
            if row["status"] == "running" and _alive(str(row["owner"] or ""), run_id, row["updated"]):
                raise StoreError(f"run {run_id} is still training; stop it first (Stop on the Train page, or "
                                 "Ctrl-C where it runs), then delete it", "training")
            con.execute("DELETE FROM epochs WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def problem(self) -> StoreError | None:
        """What is wrong with the store's database, or None when it reads whole."""
        try:
            rows = self._read("PRAGMA quick_check")
            self._read(f"SELECT {', '.join(_COLUMNS)} FROM runs LIMIT 1")
        except StoreError as err:
            return err
        if rows and rows[0][0] != "ok":
            return StoreError(f"the run store {self.db} is damaged ({rows[0][0]}). {self._remedy()}", "damaged")
        return None

    def move_aside(self) -> Path:
        """Rename a damaged or foreign runs.db (with its -wal and -shm files) to
        runs.db.damaged-<time>, so the next run starts an empty store; the file is kept for
        recovery. Refused for a store that reads whole: nothing is moved by mistake."""
        if not self.db.exists():
            raise StoreError(f"there is no run store at {self.db} to move aside", "other")
        problem = self.problem()
        if problem is None or problem.kind not in ("damaged", "layout"):
            raise StoreError(f"the run store {self.db} is not damaged; nothing was moved"
                             + (f" ({problem})" if problem else ""), "other")
        target = self.db.with_name(f"runs.db.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            for suffix in ("-wal", "-shm", ""):
                if (src := Path(f"{self.db}{suffix}")).exists():
                    os.replace(src, Path(f"{target}{suffix}"))
        except OSError as err:
            raise self._os_fault(err, self.db) from None
        self._ready = False
        return target

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        """A record from its row. A JSON column that does not parse to its type reads as empty and
        the message says so, so one damaged record neither hides the others nor crashes a page."""
        values, damaged = {}, []
        for name in _COLUMNS:
            value = row[name]
            if name in _JSON:
                try:
                    value = json.loads(value)
                except (TypeError, ValueError):
                    value = None
                if not isinstance(value, _JSON[name]):
                    damaged.append(name)
                    value = _JSON[name]()
            elif name in ("created", "updated"):
                value = value if isinstance(value, (int, float)) else 0.0
            else:
                value = "" if value is None else str(value)
            values[name] = value
        if damaged:
            values["message"] = (f"this record is damaged ({', '.join(damaged)} cannot be read); delete it with "
                                 f"`python -m ftlab runs --delete {values['id']}`. " + values["message"]).strip()
        return RunRecord(**values)

    # --- checkpoints ----------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / check_run_id(run_id)

    def checkpoint_path(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "best.pt"

    def save_checkpoint(self, run_id: str, checkpoint: dict) -> Path:
        """Write atomically: a temporary file, flushed to disk, renamed over the old one. A write
        that fails (a full disk) leaves the previous checkpoint and no temporary file."""
        import torch  # here, not at the top: listing runs needs no torch

        target = self.checkpoint_path(run_id)
        try:
            if target.exists() and not target.is_file():
                raise StoreError(f"{target} is a folder, not a checkpoint file: move it away and train again")
            _write_atomically(target, lambda fh: torch.save(checkpoint, fh))
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "inline_container" not in str(err) and \
                    "PytorchStreamWriter" not in str(err):
                raise
            raise self._checkpoint_fault(err, target, checkpoint.get("epoch")) from None
        return target

    def _checkpoint_fault(self, err: Exception, target: Path, epoch: object) -> StoreError:
        what = f"the checkpoint of epoch {epoch}" if isinstance(epoch, int) else "the checkpoint"
        kept = "the previous checkpoint is kept" if target.is_file() else "there is no earlier checkpoint"
        if isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(f"{what} could not be written to {target.parent} ({err.strerror}); {kept}. Point "
                              "FTLAB_HOME at a writable folder", "readonly")
        if isinstance(err, IsADirectoryError):
            return StoreError(f"{target} is a folder, not a checkpoint file: move it away and train again")
        if isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, None):
            return StoreError(f"{what} could not be written to {target.parent} ({err.strerror}); {kept}", "other")
        # ENOSPC, or torch's "[enforce fail at inline_container.cc] ... file write failed": the disk
        return StoreError(f"the disk is full at {target.parent} ({_free(target.parent)}): {what} was not written "
                          f"and {kept}. Free some space and train again", "full")

    def load_checkpoint(self, run_id: str) -> dict:
        path = self.checkpoint_path(run_id)
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a checkpoint file")
        if path.exists() and not path.is_file():  # a pipe would block the read for ever
            raise CheckpointError(f"{path} is not a regular file (a pipe, socket or device), not a checkpoint")
        if not path.exists():
            raise CheckpointError(f"run {run_id} has no checkpoint (it may have stopped before its first epoch)")
        from ftlab import checkpoints

        return checkpoints.load_file(path)
