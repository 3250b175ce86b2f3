"""A sweep's members as Ray tasks on a cluster (``python -m ftlab sweep --ray ADDRESS``).

The members are those of the local plan (`ftlab.sweep.make_plan`); only where they run differs:
- the members that share cached inputs go in one task, as they share one process locally (the
  shallowest boundary first, the deeper ones derive their features from it); each other member
  is a task of its own; every task declares the CPUs and GPUs it needs and Ray places it;
- a task trains in a store of its own on its node (a shared file system is not assumed) and sends
  back each member's record, epochs and checkpoint, which this process keeps in its own store
  (`RunStore.adopt`); while it trains, it posts each epoch to a small Ray actor (the board) that
  this process drains into live records, so the Sweep page and the CLI show the curves as they come;
- a task whose worker dies (a killed process, a lost node) is retried once by Ray; a second death
  records its members as failed with Ray's reason; Stop is a flag on the board that each task
  reads every half second, so a member stops after its batch and comes back "stopped".
The ftlab package travels to the workers with the job (Ray's ``py_modules``); the nodes need the
requirements installed, and a data set that is a folder must be at the same path on every node.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ftlab.runs import RunStore
from ftlab.sweep import Group, Member, Outcome, Plan, cost_text, end, record

POLL_S = 0.5  # how often a task reads the board's stop flag, and this process drains the board
CONNECT_S = 3.0  # how long an address may take to answer before it is called unreachable
MAX_CPUS = 256  # per task: the page's control goes as far
_LOCK = threading.Lock()
_USERS: list[str] = []  # the addresses of the sweeps this process runs on Ray now (one connection per process)
_EVENTS = ("Preparing", "RunStarted", "EpochEnded", "RunFinished", "RunStopped", "RunFailed")


class RayUnavailable(RuntimeError):
    """The cluster cannot be reached or used; the message says what to do."""


@dataclass(frozen=True)
class Resources:
    """What each task asks Ray for: CPU cores (its torch threads) and GPUs (0: it trains on a CPU)."""

    cpus: int = 1
    gpus: float = 0.0


def parse_address(text: object) -> str:
    """``--ray``: "auto" (the cluster `ray start` made on this machine, or RAY_ADDRESS), "local" (a Ray
    started in this process for this sweep, on this machine's cores), HOST:PORT of a head node, or
    ray://HOST:PORT (Ray Client)."""
    value = str(text or "").strip()
    if value in ("auto", "local"):
        return value
    rest = value[len("ray://"):] if value.startswith("ray://") else value
    host, _, port = rest.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536 and " " not in host:
        return value
    raise ValueError(f"--ray takes auto, local, HOST:PORT or ray://HOST:PORT (the head node's address, e.g. "
                     f"127.0.0.1:6379); not {value[:80]!r}" + ("…" if len(value) > 80 else ""))


def parse_resources(cpus: object = 1, gpus: object = 0) -> Resources:
    """``--ray-cpus`` and ``--ray-gpus``: a whole number of cores from 1, a number of GPUs from 0 (a
    fraction shares one)."""
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise ValueError(f"--ray-cpus is the CPU cores of each task, a whole number from 1 to {MAX_CPUS}; "
                         f"got {cpus!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus <= 64 or gpus != gpus:
        raise ValueError(f"--ray-gpus is the GPUs of each task, from 0 (CPU only) to 64, e.g. 1 or 0.5; got {gpus!r}")
    return Resources(cpus, float(gpus))


def tasks(plan: Plan) -> list[tuple[Member, ...]]:
    """The members in Ray tasks: those that share cached inputs together (in the plan's order, the
    shallowest boundary first), then each other member alone."""
    sharing = tuple(m for m in plan.members if m.shares)
    return ([sharing] if sharing else []) + [(m,) for m in plan.members if not m.shares]


def place(plan: Plan, address: str, resources: Resources) -> Plan:
    """``plan`` with its groups as Ray tasks (`tasks`), each with ``resources.cpus`` threads: what `run`
    runs, and what the kept sweep (the Sweep page, ``sweep --list``) says of where each member ran."""
    bundles = tasks(plan)
    gpus = f", {resources.gpus:g} GPU{'s' * (resources.gpus != 1)}" if resources.gpus else ""
    groups = tuple(Group(b, resources.cpus, f"Ray task {i + 1} of {len(bundles)} on {address}{gpus}")
                   for i, b in enumerate(bundles))
    return replace(plan, members=tuple(m for b in bundles for m in b), groups=groups, device=f"Ray ({address})",
                   ray={"address": address, "cpus": resources.cpus, "gpus": resources.gpus})


def checked(plan: Plan, address: object, cpus: object = 1, gpus: object = 0) -> tuple[Plan | None, list[str]]:
    """A checked local plan (`sweep.checked_plan`) placed on the Ray cluster at ``address`` and [] when it
    can start, or None and every reason it cannot, a sentence each (the address, the resources, whether
    anything answers there). What the CLI and the Sweep page call before they record anything."""
    try:
        address, resources = parse_address(address), parse_resources(cpus, gpus)
    except ValueError as err:
        return None, [str(err)]
    if said := problems(address):
        return None, said
    return place(plan, address, resources), []


def plan_lines(plan: Plan) -> list[str]:
    """What a `place`d plan will do, a line each (the CLI prints them, the Sweep page shows them)."""
    n = len(plan.members)
    lines = [f"sweep {plan.sweep_id}: {n} run{'s' * (n != 1)} as {len(plan.groups)} Ray task"
             f"{'s' * (len(plan.groups) != 1)}"] + [g.describe() for g in plan.groups]
    if _is_folder(plan.base.dataset):
        lines.append(f"the data set is a folder ({plan.base.dataset}): every node reads it at that path, so it must "
                     "be there on each (a member on a node without it fails and says so)")
    lines += [f"no per-class points for {strategy}: {why}" for strategy, why in plan.skipped.items()]
    return lines + list(plan.notes) + ([f"warning: {cost_text(plan)}"] if cost_text(plan) else [])


def _is_folder(dataset: str) -> bool:
    from ftlab import data

    return dataset.lower() not in {d.name for d in data.list_datasets()}


# --- on the worker ---------------------------------------------------------------------------
class Board:
    """A Ray actor between this process and its tasks: the stop flag, and the epochs posted as they end."""

    def __init__(self) -> None:
        self.stopped = False
        self.posts: list = []

    def stop(self) -> None:
        self.stopped = True

    def asked(self) -> bool:
        return self.stopped

    def post(self, item) -> None:
        self.posts.append(item)

    def take(self) -> list:
        out, self.posts = self.posts, []
        return out


def _asked_to_stop(board) -> bool:
    """Whether the sweep was stopped; a board that does not answer (its sweep's process is gone) is a stop."""
    import ray

    try:
        return bool(ray.get(board.asked.remote(), timeout=10))
    except ray.exceptions.RayError:
        return True


def _pack(store: RunStore, run_id: str) -> dict:
    """A member's record, epochs and files, to send back."""
    folder = store.run_dir(run_id)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith(".")} if folder.is_dir() else {}
    return {"record": asdict(store.get(run_id)), "epochs": store.epochs(run_id), "files": files}


def _task(configs: list[dict], run_ids: list[str], threads: int, board) -> dict:
    """One Ray task: its members one after another in a store of its own, each epoch posted to ``board``;
    returns each member's `_pack` (those it began) and whether it was stopped."""
    import ray
    from ftlab import events
    from ftlab.sweep import _run_group

    if _asked_to_stop(board):  # stopped before Ray placed it
        return {"runs": [], "stopped": True, "node": ""}
    home = tempfile.mkdtemp(prefix="ftlab-ray-")
    store = RunStore(home)
    stop = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if _asked_to_stop(board):
                stop.set()
                return

    def emit(event) -> None:
        name = type(event).__name__
        if name not in _EVENTS:
            return
        item = {"event": event}
        if isinstance(event, events.EpochEnded):  # the store has the epoch by now (`engine` adds it first)
            kept = store.get(event.run_id)
            item.update(config=kept.config, classes=kept.classes, split=kept.split,
                        epoch=event.epoch, metrics=store.epochs(event.run_id)[-1])
        board.post.remote(item)

    watcher = threading.Thread(target=watch, name="ftlab-ray-stop", daemon=True)
    watcher.start()
    try:
        _run_group(configs, run_ids, home, threads, stop, emit)
        return {"runs": [_pack(store, r) for r in run_ids if store.exists(r)], "stopped": stop.is_set(),
                "node": ray.util.get_node_ip_address()}
    finally:
        done.set()
        shutil.rmtree(home, ignore_errors=True)


# --- in this process ------------------------------------------------------------------------
def _reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is said at once, not after Ray's own minute of retries."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S):
            return
    except OSError as err:
        raise RayUnavailable(f"nothing answers at {address} ({err.strerror or err}): start the head node there with "
                             f"`ray start --head --port {port}`, or give its address (`ray status` on it prints it)"
                             ) from None


def problems(address: str) -> list[str]:
    """Why the sweep cannot reach ``address`` now, a sentence each ([] when it may): asked before a sweep
    is recorded, so a mistyped address keeps nothing (Ray's own connection can still fail later)."""
    try:
        address = parse_address(address)
        if address == "auto" and not os.environ.get("RAY_ADDRESS") and \
                not Path(tempfile.gettempdir(), "ray", "ray_current_cluster").exists():
            raise RayUnavailable("no Ray cluster was started on this machine (`auto` finds one that `ray start --head` "
                                 "made, or RAY_ADDRESS): start one, give the head node's HOST:PORT, or use local")
        _reachable(address)
    except (ValueError, RayUnavailable) as err:
        return [str(err)]
    return []


def connect(address: str, cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (once per process: a second sweep on the same address shares the
    connection, one on another address is refused), with ftlab sent to its workers."""
    import ray

    import ftlab

    with _LOCK:
        if _USERS:
            if _USERS[0] != address:
                raise RayUnavailable(f"this process already runs a sweep on the Ray cluster at {_USERS[0]}: wait for it "
                                     f"to end (or stop it) before one on {address}")
            _USERS.append(address)
            return
        _reachable(address)
        env = {k: v for k, v in os.environ.items() if k in ("FTLAB_OFFLINE", "FTLAB_MAX_PIXELS")}
        runtime = {"py_modules": [str(Path(ftlab.__file__).parent)], "env_vars": env}
        try:
            ray.init(address=address, runtime_env=runtime,
                     num_cpus=cpus if address == "local" else None, log_to_driver=False,
                     logging_level=logging.WARNING, include_dashboard=False if address == "local" else None)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
            with suppress(Exception):
                ray.shutdown()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            token = "" if address in ("auto", "local") or os.environ.get("RAY_AUTH_MODE") else (
                " A cluster made by `ray start` on Ray 2.59 or later asks for its token: set RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN to what `ray get-auth-token` prints on the head node (on the head node itself, "
                "--ray auto finds both).")
            raise RayUnavailable(f"could not join the Ray cluster at {address} ({first}): start one with "
                                 f"`ray start --head`, or give the head node's HOST:PORT.{token}") from None
        _USERS.append(address)


def _unplaceable(resources: Resources) -> str:
    """Why no node of the cluster can take a task asking for ``resources`` ("" when one can): Ray would
    keep such a task waiting for ever (a GPU asked of a cluster that has none)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= resources.cpus and n.get("GPU", 0) >= resources.gpus for n in nodes):
        return ""
    most = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    gpus = f" and {resources.gpus:g} GPU{'s' * (resources.gpus != 1)}" if resources.gpus else ""
    return (f"each task asks for {resources.cpus} CPU core{'s' * (resources.cpus != 1)}{gpus}, and no node of the "
            f"cluster has that many (the largest: {most.get('CPU', 0):g} cores, {most.get('GPU', 0):g} GPUs): ask "
            "for less with --ray-cpus / --ray-gpus, or add a node that has them")


def disconnect() -> None:
    import ray

    with _LOCK:
        if _USERS:
            _USERS.pop()
        if not _USERS:
            with suppress(Exception):
                ray.shutdown()


def _reason(err: BaseException) -> str:
    """Why a task came back without its members, in a clause: the exception a task raised (Ray does not
    retry those), or Ray's first line on a worker that died on both tries (a killed process, a lost node)."""
    import ray

    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        text = f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:300]
        return f"its Ray task raised {text}"
    return f"its Ray task's worker died on both tries (Ray retries a task once): {_short(err)}"


def _short(err: BaseException) -> str:
    """Ray's first line of an error that is not a "(pid=…, ip=…)" prefix, at most 300 characters."""
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return next((s for s in lines if not s.startswith("(")), lines[0] if lines else type(err).__name__)[:300]


def run(plan: Plan, *, store: RunStore, stop: threading.Event | None = None, emit: Callable = lambda e: None,
        on_member: Callable[[Member, dict], None] = lambda m, s: None, poll_s: float = POLL_S) -> Outcome:
    """Run a `place`d ``plan``'s members, a Ray task per group, on the cluster at ``address`` and keep them in ``store``;
    ``emit`` hears each member's events (Preparing, EpochEnded, the end) as the board brings them,
    ``on_member`` each member as it comes back. Never raises for a member's failure (its record says
    why); a cluster that cannot be reached is said in the outcome's message."""
    import ray

    address, resources = plan.ray["address"], Resources(plan.ray["cpus"], plan.ray["gpus"])
    stop = stop or threading.Event()
    outcome = Outcome(plan)
    began = time.perf_counter()
    try:
        connect(address, cpus=plan.cores)
        if said := _unplaceable(resources):
            disconnect()
            raise RayUnavailable(said)
    except RayUnavailable as err:  # nothing kept: the sweep never began
        outcome.status, outcome.message = "failed", str(err)
        outcome.wall_seconds = time.perf_counter() - began
        with suppress(KeyError):
            store.sweep(plan.sweep_id)  # recorded already (the Sweep page lists it at once): say why it ended
            store.finish_sweep(plan.sweep_id, outcome.status, outcome.message)
        return outcome
    record(plan, store)
    board, live = None, set()
    try:
        board = ray.remote(num_cpus=0)(Board).remote()
        remote = ray.remote(_task).options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=1,
                                           retry_exceptions=False, name="ftlab_sweep_task")
        pending = {remote.remote([plan.config(m).to_dict() for m in g.members], [m.run_id for m in g.members],
                                 resources.cpus, board): g.members for g in plan.groups}
        told = False
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            if stop.is_set() and not told:
                board.stop.remote()
                told = True
            _drain(ray.get(board.take.remote(), timeout=60), store, live, emit)
            for ref in done:
                bundle = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # its worker died twice, or the task raised
                    result = {"runs": [], "failure": _reason(err)}
                _drain(ray.get(board.take.remote(), timeout=60), store, live, emit)
                _keep(bundle, result, store, live, outcome, on_member, told)
    except Exception as err:  # the sweep's own machinery (the cluster went away): said, not raised
        outcome.status, outcome.message = "failed", f"the sweep on Ray stopped: {_short(err)}"
    else:
        end(outcome, stop)
    finally:
        if board is not None:
            with suppress(Exception):
                ray.kill(board)
        disconnect()
        for run_id in live:  # a live record whose task never came back (the cluster went away): interrupted
            store.release(run_id)
        store.mark_interrupted()
    outcome.wall_seconds = time.perf_counter() - began
    store.finish_sweep(plan.sweep_id, outcome.status, outcome.message)
    return outcome


def _drain(items: list, store: RunStore, live: set[str], emit: Callable) -> None:
    """The board's posts: each epoch into the member's live record (made at its first epoch), each event to ``emit``."""
    for item in items:
        event = item["event"]
        if "epoch" in item:
            run_id = event.run_id
            if run_id not in live:
                live.add(run_id)
                if not store.exists(run_id):
                    store.create(run_id, item["config"])
                store.set_data(run_id, item["classes"], item["split"])
            store.add_epoch(run_id, item["epoch"], item["metrics"])
        emit(event)


def _keep(bundle: tuple[Member, ...], result: dict, store: RunStore, live: set[str], outcome: Outcome,
          on_member: Callable, stopped: bool) -> None:
    """A task's members into ``store``: those it sent back as they are, the rest failed with Ray's reason
    (or left out when the sweep was stopped before they began)."""
    back = {p["record"]["id"]: p for p in result.get("runs", [])}
    for member in bundle:
        pack = back.get(member.run_id)
        if pack is not None:
            store.adopt(pack["record"], pack["epochs"], pack["files"])
        elif "failure" in result:
            message = f"{result['failure']}; the node's Ray logs (`ray logs` on the head node) say more"
            if not store.exists(member.run_id):
                store.create(member.run_id, {**outcome.plan.config(member).to_dict()})
            store.finish(member.run_id, "failed", {"run_id": member.run_id}, message=message)
        else:
            if member.run_id in live:
                store.finish(member.run_id, "stopped" if stopped else "interrupted", {"run_id": member.run_id},
                             message="the sweep was stopped" if stopped else "its task ended without it")
            continue
        live.discard(member.run_id)
        kept = store.get(member.run_id)
        outcome.summaries[member.run_id] = {**kept.summary, "status": kept.status, "message": kept.message}
        on_member(member, outcome.summaries[member.run_id])
