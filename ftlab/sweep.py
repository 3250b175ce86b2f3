"""A sweep of freeze strategies: one ordinary kept run per strategy and seed, run as cheaply as
their sharing allows, then compared (`ftlab.compare`).

What makes it cheaper than the same runs one by one:
- the data are decoded once per process (`ftlab.data.reusing_decoded`);
- the members whose inputs can be cached run one after another in one process, shallowest
  boundary first: the first computes the frozen prefix from the images, each deeper one derives
  its features from those with its extra blocks alone (`engine._Trainer._derived`), and a
  strategy's other seeds find them cached;
- on a CPU with several cores the members that share nothing (full fine-tuning) run in parallel
  processes, up to the core count, each with its share of the threads; on a GPU, and on one
  core, everything runs one after another in this process.
Every member holds the split fixed (`split_seed`), so all are scored on the same val images and
their predictions pair up for McNemar's test.
"""
from __future__ import annotations

import multiprocessing
from collections import Counter
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace

from ftlab import freeze
from ftlab.config import TrainConfig
from ftlab.messages import some
from ftlab.runs import RunStore, new_run_id

DEFAULT_STRATEGIES = ("linear-probe", "top-1", "top-2", "top-4", "full", "gradual", "lp-ft")
STRATEGY_CHOICES = DEFAULT_STRATEGIES + ("top-3", "top-6", "top-all")  # the Sweep page's list; any other can be typed
MAX_MEMBERS = 200  # strategies x seeds: a sweep is a lesson, not a search
MAX_WORKERS = 64  # processes: the page's control goes as far; more than the cores are not started anyway


@dataclass(frozen=True)
class Member:
    """One run of the sweep: a strategy and a seed, with its run id given up front (the Sweep page
    lists a member before it starts)."""

    run_id: str
    strategy: str
    seed: int
    frozen: int  # backbone blocks frozen in the first epoch: where its cached inputs start (0: none)
    shares: bool  # trains on cached features at first, so it shares them with the others
    per_class: int = 0  # a data-efficiency point: trained on this many images per class (0: all)
    images: str = ""  # ``per_class`` against the classes' training images (`splits.per_class_words`): "5", or
    # "10 (the class 'a' has only 9)"; "" for the whole data
    every_block: bool = False  # trains every backbone block at some epoch: the whole backbone, forward and back

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "strategy": self.strategy, "seed": self.seed, "frozen": self.frozen,
                "shares": self.shares, "per_class": self.per_class, "images": self.images,
                "every_block": self.every_block}

    @property
    def per_class_text(self) -> str:
        """", 5 per class" for a data-efficiency point (with what a class with fewer keeps), "" for the whole data."""
        return f", {self.images or self.per_class} per class" if self.per_class else ""


@dataclass(frozen=True)
class Group:
    """Members that run one after another in one process, with ``threads`` CPU threads (None: as set)."""

    members: tuple[Member, ...]
    threads: int | None
    where: str  # "this process" or "process 2 of 3"

    def describe(self) -> str:
        threads = f", {self.threads} thread{'s' * (self.threads != 1)}" if self.threads else ""
        names = ", ".join(f"{m.strategy} (seed {m.seed}{m.per_class_text})" for m in self.members)
        why = " (they share the cached features)" if sum(m.shares for m in self.members) > 1 else ""
        return f"{self.where}{threads}: {names}{why}"


@dataclass
class Plan:
    sweep_id: str
    base: TrainConfig
    members: tuple[Member, ...]
    groups: tuple[Group, ...]
    cores: int
    device: str
    skipped: dict = field(default_factory=dict)  # data efficiency: strategy -> why it has no points
    notes: tuple[str, ...] = ()  # what the plan changed of what was asked, and why (a sentence each)
    data_problem: str = ""  # why the data cannot train a sweep ("" when they can): `problems` says it
    train_images: int = 0  # in the training split (0: unknown)
    strategies: tuple[str, ...] = ()  # as they were asked, in that order (the members run in another)
    ray: dict = field(default_factory=dict)  # on a Ray cluster (`ray_sweep.place`): address, cpus, gpus; {}: here

    def config(self, member: Member) -> TrainConfig:
        return replace(self.base, strategy=member.strategy, seed=member.seed, sweep=self.sweep_id, name="",
                       split_seed=self.base.split_seed if self.base.split_seed is not None else self.base.seed,
                       train_per_class=member.per_class or self.base.train_per_class)

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "members": [m.to_dict() for m in self.members], "skipped": self.skipped,
                "notes": list(self.notes), "cost": cost_text(self),
                "groups": [{"where": g.where, "threads": g.threads, "members": [m.run_id for m in g.members],
                            "text": g.describe()} for g in self.groups],
                "cores": self.cores, "device": self.device, **({"ray": self.ray} if self.ray else {})}


def base_text(base: TrainConfig) -> str:
    """What every member shares, in a line for the Sweep page (set on the Data, Model and Train pages)."""
    from ftlab.config import resolved_image_size

    lr = "each strategy's default learning rate" if base.lr is None else f"learning rate {base.lr:g}"
    return (f"Every member: {base.epochs} epoch{'s' * (base.epochs != 1)} at {resolved_image_size(base)} px, batch "
            f"{base.batch_size}, {base.optimizer}, {lr}, split seed "
            f"{base.seed if base.split_seed is None else base.split_seed}.")


def parse_strategies(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The strategies of ``--strategies``: a comma list, each one `Strategy.parse` reads; repeats dropped."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    items = list(dict.fromkeys(s for s in items if s))
    if not items:
        raise ValueError("name at least one strategy, e.g. --strategies linear-probe,top-2,full")
    bad = []
    for s in items:
        try:
            freeze.Strategy.parse(s)
        except ValueError as err:
            bad.append(str(err))
    if bad:
        raise ValueError("; ".join(bad))
    return tuple(items)


def parse_seeds(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The seeds of ``--seeds``: a comma list of whole numbers from 0."""
    if not isinstance(text, str):
        items = list(text)
    else:
        try:
            items = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; not {text!r}") from None
    if not items:
        raise ValueError("name at least one seed, e.g. --seeds 0 or --seeds 0,1,2")
    if any(s < 0 or s > 2**31 - 1 for s in items):
        raise ValueError(f"seeds run from 0 to {2**31 - 1}; got {some(items)}")
    return tuple(dict.fromkeys(items))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _frozen_counts(base: TrainConfig, strategies: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Per strategy, backbone blocks frozen in the first epoch and in every epoch, from the model's own
    blocks (random weights: building it takes a fraction of a second and downloads nothing). lp-ft
    fine-tunes every block once its probe ends, whenever that is."""
    from ftlab import backbones
    from ftlab.config import resolved_image_size

    model = backbones.create_model(base.backbone, 2, "random", edits=base.edits(),
                                   image_size=resolved_image_size(base))
    blocks = model.param_blocks()
    out = {}
    for s in strategies:
        plan = freeze.make_plan(blocks, s, gradual_every=base.gradual_every)
        body = set(freeze.backbone_blocks(plan.blocks))
        always = 0 if plan.strategy == "lp-ft" else len(body.intersection(*(plan.frozen_at(e)
                                                                            for e in range(base.epochs))))
        out[s] = (len(plan.frozen_at(0) & body), always)
    return out


def _train_data(base: TrainConfig) -> tuple[list[str], list[int], str]:
    """The classes and their training images per class (before ``train_per_class``), or why the data
    cannot train a sweep: the data set's own sentence (one class, too few images, unreadable)."""
    from ftlab import data
    from ftlab.data.prepared import train_counts

    try:
        ds = data.load_for(base, download=False)  # a click on the page downloads nothing: the first member does
        counts = train_counts(base, ds)
        split = data.split_for(base, ds)
    except data.DatasetUnavailable:  # not downloaded yet: the members fetch it (or each says why it cannot)
        return [], [], ""
    except (data.DataError, OSError) as err:
        return [], [], str(err)
    if not len(split.val):
        return list(ds.classes), counts, ("the split leaves no val images to compare the members on: add images, "
                                          "or raise the validation share.")
    return list(ds.classes), counts, ""


def _caches(base: TrainConfig) -> bool:
    """Whether a member with frozen blocks trains on cached features under ``base``'s options."""
    augmenting = base.random_crop or base.flip or base.color_jitter > 0
    return base.feature_cache and base.bn_frozen and (not augmenting or base.augment_views > 0)


def parse_per_class(text: str | tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
    """The data-efficiency points of ``--per-class``: images per class, e.g. 2,5,10,20 (empty: none)."""
    if text is None or text == "":
        return ()
    try:
        items = [int(s) for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    except ValueError:
        raise ValueError(f"--per-class takes whole numbers separated by commas, e.g. 2,5,10,20; not {text!r}") from None
    if any(k < 1 for k in items):
        raise ValueError(f"images per class start at 1; got {some(items)}")
    return tuple(sorted(set(items)))


def _cheap(strategy: str) -> bool:
    """Cheap enough for data-efficiency points: it trains on cached features throughout (a probe or
    top-N), so a point costs its few training images; gradual, lp-ft and full fine-tune every block."""
    return freeze.Strategy.parse(strategy).kind in ("linear-probe", "top-N")


def _real_points(per_class: tuple[int, ...], train: list[int]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The data-efficiency points that train on fewer images than the whole data, and a sentence for
    those that would not: a point at or above every class's count is the whole training split, which
    the whole-data members train on already (it would be a second, mislabelled copy of them)."""
    if not train or not per_class:
        return per_class, ()
    whole = [k for k in per_class if k >= max(train)]
    if not whole:
        return per_class, ()
    kept = tuple(k for k in per_class if k < max(train))
    said = ", ".join(map(str, whole))
    return kept, (f"no members for {said} images per class: no class has more than {max(train)} training images, "
                  f"so {'each' if len(whole) > 1 else 'it'} is all {sum(train)} of them, which the whole-data "
                  f"members train on already; give fewer than {max(train)} per class for a point (at most "
                  f"{min(train)} for one that every class fills).",)


def _why_no_points(strategy: str, frozen: int, always_frozen: int) -> str:
    """Why ``strategy`` gets no data-efficiency points, in words."""
    if always_frozen == 0:
        return "every block trains at some epoch, so each point is a whole fine-tuning run"
    if not _cheap(strategy):  # gradual over too few epochs to reach the stem
        return "it unfreezes blocks as the epochs go on, so each point is a fine-tuning run of its own"
    return "its inputs are not cached under these options (see --feature-cache)"


def make_plan(base: TrainConfig, strategies, seeds, *, cores: int | None = None, device: str | None = None,
              workers: int | None = None, per_class=(), data: bool = True) -> Plan:
    """Members in the order they run and the processes they run in. ``workers`` caps the processes
    (default: the core count; 1: everything in this process). ``per_class`` adds, for each strategy
    cheap enough and each seed, a member trained on that many images per class. ``data`` reads the data
    set's file list and split (not its pixels) for `problems` and the per-class points; a ValueError
    says what is wrong with the strategies, seeds or points."""
    from ftlab.data.splits import per_class_words
    from ftlab.engine import pick_device

    strategies, seeds, per_class = parse_strategies(strategies), parse_seeds(seeds), parse_per_class(per_class)
    counts = _frozen_counts(base, strategies)
    frozen = {s: c[0] for s, c in counts.items()}
    caching = _caches(base)
    classes, train, data_problem = _train_data(base) if data else ([], [], "")
    per_class, notes = _real_points(per_class, train)
    points = {s: per_class if caching and frozen[s] > 0 and _cheap(s) else () for s in strategies}
    skipped = {s: _why_no_points(s, *counts[s]) for s in strategies if per_class and not points[s]}
    count = sum(len(seeds) * (1 + len(points[s])) for s in strategies)
    if count > MAX_MEMBERS:
        asked = f"{len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'} x {len(seeds)} seed" + \
            "s" * (len(seeds) != 1)
        raise ValueError(f"{asked} (with the per-class points) is {count} "
                         f"runs; a sweep takes at most {MAX_MEMBERS}")
    device = device or pick_device(base.device).type
    cores = cores or available_cores()
    members = [Member(new_run_id(), s, seed, frozen[s], caching and frozen[s] > 0, k,
                      per_class_words(k, train, classes) if k else "", counts[s][1] == 0)
               for s in strategies for k in (0, *points[s]) for seed in seeds]
    facts = {"skipped": skipped, "notes": notes, "data_problem": data_problem, "train_images": sum(train),
             "strategies": strategies}
    # shallowest cached boundary first (the most blocks train): the deeper ones derive their inputs from it;
    # the whole data first, then each data-efficiency point (its own training images, the same val images)
    members.sort(key=lambda m: (not m.shares, m.per_class, m.frozen if m.shares else 0, m.seed))
    sharing = tuple(m for m in members if m.shares)
    alone = [(m,) for m in members if not m.shares]
    bundles = ([sharing] if sharing else []) + alone
    limit = min(cores, workers or cores, len(bundles))
    if device != "cpu" or limit <= 1:
        return Plan(new_run_id(), base, tuple(members), (Group(tuple(members), None, "this process"),), cores, device,
                    **facts)
    slots: list[list[Member]] = [[] for _ in range(limit)]
    for i, bundle in enumerate(bundles):  # the shared bundle first, then one alone member per slot in turn
        slots[i % limit].extend(bundle)
    threads = max(1, cores // limit)
    groups = tuple(Group(tuple(slot), threads, f"process {i + 1} of {limit}") for i, slot in enumerate(slots))
    return Plan(new_run_id(), base, tuple(m for g in groups for m in g.members), groups, cores, device, **facts)


def problems(plan: Plan) -> list[str]:
    """Every reason ``plan`` cannot start, a sentence each that says what to do ([] when it can): the
    options of each member (`config.validate`, each sentence once) and the data. The CLI and the Sweep
    page both ask this before recording a sweep, so nothing half-made is kept."""
    from ftlab.config import validate

    out = list(dict.fromkeys(p for m in plan.members for p in validate(plan.config(m))))
    return out + ([plan.data_problem] if plan.data_problem else [])


def parse_workers(value: object) -> int | None:
    """``--workers`` / the page's Processes: 0 (or empty) for one per core, else 1 to `MAX_WORKERS`."""
    if value in (None, "", 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ValueError(f"the number of processes must be a whole number from 0 (one per core) to {MAX_WORKERS}; "
                         f"got {value!r}")
    return value


def checked_plan(base: TrainConfig, strategies, seeds, *, per_class=(), workers: object = None,
                 cores: int | None = None, device: str | None = None) -> tuple[Plan | None, list[str]]:
    """The plan of a sweep and [] when it can start, or None and every reason it cannot, a sentence each
    (the strategies, seeds, points and processes as typed, each member's options, the data). What the
    CLI and the Sweep page call before they record anything."""
    from ftlab.config import validate

    strategies_text, seeds_text = strategies, seeds
    try:
        strategies, seeds = parse_strategies(strategies), parse_seeds(seeds)
        per_class, workers = parse_per_class(per_class), parse_workers(workers)
    except ValueError as err:
        return None, [str(err)]
    said = list(dict.fromkeys(p for s in strategies for p in validate(replace(base, strategy=s))))
    if said:  # before the plan builds the model: a backbone that is not one cannot be built
        return None, said
    try:
        plan = make_plan(base, strategies, seeds, per_class=per_class, workers=workers, cores=cores, device=device)
    except ValueError as err:
        return None, [str(err)]
    said = problems(plan)
    if said:
        return None, said
    repeated = [f"{name} is named {'twice' if n == 2 else f'{n} times'} in the {what}: it runs once." for what, text in
                (("strategies", strategies_text), ("seeds", seeds_text)) for name, n in _repeats(text).items()]
    return replace(plan, notes=tuple(repeated) + plan.notes), []


def _repeats(text: object) -> dict[str, int]:
    """The items of a comma list (or a list) given more than once, with their counts."""
    items = [str(s).strip() for s in (text.split(",") if isinstance(text, str) else text or ())]
    counts = Counter(s for s in items if s)
    return {s: n for s, n in counts.items() if n > 1}


def cost_text(plan: Plan) -> str:
    """A warning naming the members that train every backbone block ("" when none does): they pass every
    training image through the whole backbone, forward and backward, in every epoch, where the others
    train on the frozen blocks' features computed once, so they take most of the sweep's time."""
    heavy = [m for m in plan.members if m.every_block]
    if not heavy:
        return ""
    named = {m.strategy for m in heavy}
    strategies = [s for s in plan.strategies if s in named] or sorted(named)
    names, verb = some(strategies), "train" if len(heavy) > 1 else "trains"
    epochs = plan.base.epochs
    images = (f"{plan.train_images:,} training images x {epochs} epoch{'s' * (epochs != 1)} = "
              f"{plan.train_images * epochs:,} image passes" if plan.train_images else
              f"every training image in each of {epochs} epoch{'s' * (epochs != 1)}")
    light = len(plan.members) - len(heavy)
    rest = (f"; the other {light} run{'s' * (light != 1)} train{'s' * (light == 1)} on features of the frozen blocks "
            "computed once" if light else "")
    return (f"{names} ({len(heavy)} of {len(plan.members)} runs) {verb} every backbone block: each runs "
            f"{images} through the whole backbone, forward and backward{rest}. They will take most of the "
            f"sweep's time (on a 2-core laptop, far more than the rest together); leave them out for a quick "
            f"sweep.")


def plan_lines(plan: Plan) -> list[str]:
    """What ``plan`` will do, a line each, before it starts (the CLI prints them, the Sweep page shows them):
    the runs and where they run, the points it will not train and why, and the cost warning."""
    if plan.ray:
        from ftlab import ray_sweep

        return ray_sweep.plan_lines(plan)
    lines = [f"sweep {plan.sweep_id}: {len(plan.members)} run{'s' * (len(plan.members) != 1)} on {plan.device} "
             f"({plan.cores} core{'s' * (plan.cores != 1)})"]
    lines += [g.describe() for g in plan.groups]
    lines += [f"no per-class points for {strategy}: {why}" for strategy, why in plan.skipped.items()]
    lines += list(plan.notes)
    return lines + ([f"warning: {cost_text(plan)}"] if cost_text(plan) else [])


@dataclass
class Outcome:
    """What a sweep did: its plan, each member's summary (by run id), its wall time and how it ended."""

    plan: Plan
    summaries: dict[str, dict] = field(default_factory=dict)
    wall_seconds: float = 0.0
    status: str = "running"  # finished | stopped | failed
    message: str = ""


def _run_group(configs: list[dict], run_ids: list[str], home: str, threads: int | None,
               stop: threading.Event, emit: Callable = lambda e: None) -> None:
    """The members of one group, one after another, sharing decoded data and cached features."""
    import torch

    from ftlab import data, engine

    if threads:
        torch.set_num_threads(threads)
    store = RunStore(home)
    with data.reusing_decoded():
        for config, run_id in zip(configs, run_ids):
            if stop.is_set():
                return
            engine.run(TrainConfig.from_dict(config), store=store, emit=emit, stop=stop, run_id=run_id)


def _child(configs: list[dict], run_ids: list[str], home: str, threads: int | None, stop) -> None:
    """A worker process: its group, stopped when the parent sets ``stop`` (a multiprocessing Event)."""
    local = threading.Event()

    def watch() -> None:
        stop.wait()
        local.set()
    threading.Thread(target=watch, daemon=True).start()
    _run_group(configs, run_ids, home, threads, local)


def record(plan: Plan, store: RunStore) -> None:
    """Keep ``plan`` in the store as a running sweep (once: `run` calls it too), so that a page lists it
    and its members before the first one starts."""
    try:
        store.sweep(plan.sweep_id)
    except KeyError:
        store.create_sweep(plan.sweep_id, plan.to_dict())


def run(plan: Plan, *, store: RunStore, stop: threading.Event | None = None, emit: Callable = lambda e: None,
        on_member: Callable[[Member, dict], None] = lambda m, s: None, poll_s: float = 0.5) -> Outcome:
    """Run ``plan``'s members; ``on_member`` hears of each as it ends (in the order they end).
    Never raises for a member's failure: that member's record says what went wrong."""
    stop = stop or threading.Event()
    outcome = Outcome(plan)
    record(plan, store)
    began = time.perf_counter()
    by_id = {m.run_id: m for m in plan.members}

    def collect() -> None:
        for run_id, member in by_id.items():
            if run_id in outcome.summaries or not store.exists(run_id):
                continue
            record = store.get(run_id)
            if record.status != "running":
                outcome.summaries[run_id] = {**record.summary, "status": record.status, "message": record.message}
                on_member(member, outcome.summaries[run_id])

    try:
        if len(plan.groups) == 1:
            group = plan.groups[0]

            def relay(event) -> None:
                emit(event)
                if type(event).__name__ in ("RunFinished", "RunStopped", "RunFailed"):
                    collect()
            _run_group([plan.config(m).to_dict() for m in group.members], [m.run_id for m in group.members],
                       str(store.home), group.threads, stop, relay)
            collect()
            failed = []
        else:
            failed = _run_processes(plan, store, stop, collect, poll_s)
    except Exception as err:  # the sweep's own machinery (a process that could not start): said, not raised
        outcome.status, outcome.message = "failed", f"the sweep stopped: {err}"
    else:
        end(outcome, stop, failed)
    outcome.wall_seconds = time.perf_counter() - began
    store.finish_sweep(plan.sweep_id, outcome.status, outcome.message)
    return outcome


def start(plan: Plan, *, store: RunStore, stop: threading.Event | None = None, emit: Callable = lambda e: None,
          on_member: Callable[[Member, dict], None] = lambda m, s: None) -> Outcome:
    """`run` here, or `ray_sweep.run` for a plan placed on a Ray cluster (`Plan.ray`)."""
    if plan.ray:
        from ftlab import ray_sweep

        return ray_sweep.run(plan, store=store, stop=stop, emit=emit, on_member=on_member)
    return run(plan, store=store, stop=stop, emit=emit, on_member=on_member)


def end(outcome: Outcome, stop: threading.Event, failed: list[str] = ()) -> None:
    """How a sweep whose members all came back ended (here or on Ray): stopped, failed (``failed``,
    what went wrong with its processes, and its failed members, in words) or finished."""
    failed = list(failed) + _failed_members(outcome.plan, outcome.summaries)
    outcome.status = "stopped" if stop.is_set() else "failed" if failed else "finished"
    outcome.message = (f"stopped after {len(outcome.summaries)} of {len(outcome.plan.members)} runs" if stop.is_set()
                       else "; ".join(failed))


def _failed_members(plan: Plan, summaries: dict[str, dict]) -> list[str]:
    """A failed member's strategy, seed and message, said once per message (the same data fault fails
    every member alike), with the count."""
    failed = [(m, summaries[m.run_id]) for m in plan.members if summaries.get(m.run_id, {}).get("status") == "failed"]
    if not failed:
        return []
    said = dict.fromkeys(f"{m.strategy} (seed {m.seed}{m.per_class_text}): {s.get('message') or 'no reason kept'}"
                         for m, s in failed)
    return [f"{len(failed)} of {len(plan.members)} runs failed: " + "; ".join(list(said)[:3])
            + (f"; and {len(said) - 3} more" if len(said) > 3 else "")]


def _run_processes(plan: Plan, store: RunStore, stop: threading.Event, collect: Callable[[], None],
                   poll_s: float) -> list[str]:
    """Each group in its own process (spawned: a fresh interpreter, no forked torch threads); returns
    what went wrong with any process, in words."""
    ctx = multiprocessing.get_context("spawn")
    flag = ctx.Event()
    procs = []
    for g in plan.groups:
        p = ctx.Process(target=_child, name=f"ftlab-sweep-{g.where}", daemon=True,
                        args=([plan.config(m).to_dict() for m in g.members], [m.run_id for m in g.members],
                              str(store.home), g.threads, flag))
        p.start()
        procs.append((g, p))
    while any(p.is_alive() for _, p in procs):
        if stop.is_set():
            flag.set()
        collect()
        for _, p in procs:
            p.join(poll_s / len(procs))
    store.mark_interrupted()  # a member whose process died mid-run reads as interrupted, not running
    collect()
    return [f"{g.where} ended with exit code {p.exitcode}" for g, p in procs if p.exitcode]


def report(sweep_id: str, store: RunStore, wall_seconds: float | None = None) -> dict:
    """The sweep's summary (the ``--json`` line): where each member ran, each member's status and
    figures, the comparison (`ftlab.compare.report`: intervals, the pick, McNemar between pairs) of
    the members trained on all the data, and the data-efficiency points."""
    v = view(store, sweep_id)
    summaries = {}
    for row in v.rows:
        with suppress(KeyError):
            summaries[row["run"]] = store.get(row["run"]).summary
    return {"sweep_id": sweep_id, "status": v.status, "message": v.message, "groups": v.groups,
            "skipped": v.skipped, "notes": v.notes, "cost": v.cost, "wall_seconds": wall_seconds,
            "members": [{**m, "status": r["status"], "summary": summaries.get(m["run_id"], {})}
                        for m, r in zip(store.sweep(sweep_id)["plan"]["members"], v.rows)],
            "comparison": v.comparison, "efficiency": v.efficiency}


def report_text(rep: dict) -> str:
    """The summary as the CLI prints it: a line per member, the pick, and which pairs the test tells apart."""
    lines = [f"sweep {rep['sweep_id']}: {rep['status']}" + (f" ({rep['message']})" if rep["message"] else "")]
    shown = {m["run"]: m for m in rep["comparison"]["members"]}
    for m in rep["members"]:
        row = shown.get(m["run_id"], {})
        best = m["summary"].get("best_val_accuracy")
        k = f", {m.get('images') or m['per_class']} per class" if m.get("per_class") else ""
        lines.append(f"  {m['strategy']:14} seed {m['seed']}{k}: {m['status']}, best val "
                     f"{'none' if best is None else f'{best:.3f}'}"
                     + (f" (95% {row['95% interval']})" if row.get("95% interval") else "")
                     + (f", {m['summary']['cpu_seconds']:.0f} CPU-s" if m["summary"].get("cpu_seconds") else ""))
    lines += [f"note: {n}" for n in rep.get("notes", [])]
    comparison = rep["comparison"]
    lines.append(f"pick: {comparison['pick']['reason']}")
    told = [p for p in comparison["pairs"] if p["distinguishable"]]
    lines.append(f"McNemar: {len(told)} of {len(comparison['pairs'])} pairs distinguishable (p < 0.05)"
                 + "".join(f"\n  {p['sentence']}" for p in told))
    for strategy, series in rep["efficiency"].items():
        lines.append(f"data efficiency, {strategy}: " + ", ".join(f"{p['label']}/class {p['mean']:.3f}"
                                                              for p in series))
    return "\n".join(lines)


# --- what the Sweep page and the CLI show ------------------------------------------------------
@dataclass
class View:
    """A kept sweep as the page shows it: every planned member with its status, the finished ones
    as `ftlab.compare.Member`s (the whole training data) and the data-efficiency points."""

    sweep_id: str
    status: str
    message: str
    base: dict
    groups: list[str]
    skipped: dict
    notes: list[str]  # what the plan changed of what was asked (`Plan.notes`)
    cost: str  # the warning of `cost_text`: the members that train every block ("" when none does)
    rows: list[dict]  # per planned member: strategy, seed, images per class, status, best val, run
    members: list  # compare.Member, trained on all the training images
    efficiency: dict  # strategy -> [{per_class, images_per_class, mean, low, high, accuracies, label}]
    running: bool  # a member still trains (or waits its turn)
    comparison: dict  # `ftlab.compare.report` of ``members``: the pick (among strategies with several seeds)


def view(store: RunStore, sweep_id: str) -> View:
    from ftlab import compare

    kept = store.sweep(sweep_id)
    plan = kept["plan"]
    records, rows = {}, []
    for m in plan.get("members", []):
        try:
            records[m["run_id"]] = record = store.get(m["run_id"])
        except KeyError:
            record = None
        best = record.summary.get("best_val_accuracy") if record else None
        status = record.status if record else ("waiting" if kept["status"] == "running" else "not run")
        images = m.get("images") or m.get("per_class") or "all"
        rows.append({"strategy": m["strategy"], "seed": m["seed"], "images per class": images,
                     "status": status, "best val": best, "run": m["run_id"]})
    whole = [m["run_id"] for m in plan.get("members", []) if not m.get("per_class") and m["run_id"] in records]
    members = compare.members(store, [records[r] for r in whole])
    return View(sweep_id, kept["status"], kept["message"], plan.get("base", {}),
                [g.get("text", "") for g in plan.get("groups", [])], plan.get("skipped", {}),
                list(plan.get("notes", [])), plan.get("cost", ""), rows, members,
                _efficiency(store, plan, records), any(r["status"] in ("waiting", "running") for r in rows),
                compare.report(members))


def _efficiency(store: RunStore, plan: dict, records: dict) -> dict:
    """Per strategy with data-efficiency members: accuracy against images per class, the mean over its
    seeds with the 95% interval of the per-image mean correctness (all seeds score the same val images),
    and its whole-data members as the last point."""
    import numpy as np

    from ftlab import compare

    points: dict[str, dict[int, list]] = {}
    words = {m.get("per_class"): m.get("images") or str(m.get("per_class")) for m in plan.get("members", [])}
    for m in plan.get("members", []):
        if m["run_id"] in records:
            points.setdefault(m["strategy"], {}).setdefault(m.get("per_class") or 0, []).append(records[m["run_id"]])
    out = {}
    for strategy, by_k in points.items():
        if len(by_k) < 2:
            continue
        series = []
        for k, recs in sorted(by_k.items(), key=lambda kv: (kv[0] == 0, kv[0])):
            done = [x for x in compare.members(store, recs) if x.correct is not None]
            if not done or len({len(x.correct) for x in done}) != 1:
                continue
            mean_correct = np.mean([x.correct for x in done], axis=0)
            low, high = compare.bootstrap_interval(mean_correct)
            # the images each point trained on, as its records kept them: a class with fewer than k keeps its own
            train = [len(r.split.get("train", [])) for r in recs]
            classes = max(1, len(recs[0].classes))
            series.append({"per_class": k or None, "label": words.get(k, str(k)) if k else "all",
                           "images_per_class": float(np.mean(train)) / classes,
                           "mean": float(mean_correct.mean()), "low": low, "high": high,
                           "accuracies": [float(x.best_val) for x in done]})
        out[strategy] = series
    return out


def progress_sayer(plan: Plan, say: Callable[[str], None]) -> Callable:
    """An ``emit`` for `run` that tells ``say`` what the sweep does now, in a sentence (the Sweep page's line)."""
    from ftlab import events

    names = {m.run_id: (i + 1, m) for i, m in enumerate(plan.members)}

    def emit(e) -> None:
        at = names.get(getattr(e, "run_id", ""))
        if at is None:
            return
        i, m = at
        who = f"run {i} of {len(plan.members)}, {m.strategy} (seed {m.seed}{m.per_class_text})"
        if isinstance(e, events.Preparing):
            say(f"{who}: {e.message}")
        elif isinstance(e, events.EpochEnded):
            say(f"{who}: epoch {e.epoch}/{e.epochs}, val accuracy {e.val_accuracy:.3f}")
    return emit
