"""``python -m ftlab``: train, sweep freeze strategies, probe the blocks, find a learning rate, list data sets
and backbones, class figures, runs, predict, export.

Progress goes to stderr; with ``--json`` the last line of stdout is one JSON object.
The ``train`` options are built from ``TrainConfig``'s fields, so each default lives there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import typing
from pathlib import Path

from ftlab import config as cfg
from ftlab import events, explore, tasks
from ftlab.messages import printable
from ftlab.paths import SettingError, StoreError

EXIT_BAD_INPUT = 2
# the TrainConfig fields that decide a data set's split, and so its figures
_STATS_OPTIONS = ("dataset", "val_fraction", "test_fraction", "imbalance_ratio", "seed", "shapes_classes",
                  "shapes_per_class", "shapes_noise")


def _refuse_a_second_value(parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, value,
                           option: str | None) -> None:
    """An option given twice with different values is a mistake (``--strategy full ... --strategy
    top-2``): argparse would keep the last one silently."""
    given = namespace.__dict__.setdefault("_given", {})
    if dest in given and given[dest] != value:
        parser.error(f"{option} is given twice ({given[dest]!r}, then {value!r}): give it once")
    given[dest] = value


class _Once(argparse.Action):
    """Store the option's value; a second, different value is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_a_second_value(parser, namespace, self.dest, values, option_string)
        setattr(namespace, self.dest, values)


class _FlagOnce(argparse.BooleanOptionalAction):
    """``--flip`` / ``--no-flip``; both on one command line is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", {})
        if given.setdefault(self.dest, option_string) != option_string:
            parser.error(f"{given[self.dest]} and {option_string} are both given: give one")
        super().__call__(parser, namespace, values, option_string)


_METAVARS = {"teacher": "RUN_ID", "distill_temperature": "T", "distill_alpha": "A"}  # as the issue writes them


def _add_config_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """``TrainConfig``'s fields as flags (``only``: those a command takes, e.g. `probe`)."""
    for f in cfg.options():
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind, meta = cfg.option_type(f), f.metadata
        help_text = meta["help"] + _default_and_range(f, kind)
        if kind is bool:
            parser.add_argument(flag, action=_FlagOnce, default=f.default, help=help_text)
        elif typing.get_origin(kind) is tuple:  # frozen_blocks, adapter_after, head: comma lists
            widths = typing.get_args(kind)[0] is int
            parser.add_argument(flag, type=_widths if widths else _block_list, action=_Once, default=f.default,
                                metavar="N,N" if widths else "BLOCK,BLOCK", help=help_text)
        else:
            parser.add_argument(flag, type=kind, action=_Once, default=f.default, choices=meta["choices"],
                                metavar=_METAVARS.get(f.name), help=help_text)


def _widths(text: str) -> tuple[int, ...]:
    """``--head 512,128``; argparse turns the ValueError's message into a usage error (exit 2)."""
    from ftlab.edits import parse_widths

    try:
        return parse_widths(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _block_list(text: str) -> tuple[str, ...]:
    """``--adapter-after stage5,stage6``: block names separated by commas (empty ones dropped)."""
    return tuple(b.strip() for b in text.split(",") if b.strip())


def _default_and_range(f: dataclasses.Field, kind: type) -> str:
    """What `train --help` adds to an option's own words, e.g. " (default: 0.2; range 0.05 to 0.5)"."""
    meta, shown = f.metadata, []
    if f.default not in (None, ""):
        shown.append(f"default: {f.default}")
    elif "default" not in meta["help"]:  # lr and image size say themselves what an empty value means
        shown.append("default: none")
    if meta["lo"] is not None:
        fmt = "{:,}" if kind is int else "{:g}"
        shown.append(f"range {fmt.format(meta['lo'])} to {fmt.format(meta['hi'])}")
    return f" ({'; '.join(shown)})" if shown else ""


def _prog() -> str:
    """The command as the user typed it, for usage lines: ``ftlab`` (the installed console script,
    `pyproject.toml`) or ``python -m ftlab``."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "ftlab" if called.removesuffix(".exe") == "ftlab" else "python -m ftlab"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=_prog(), description="ftlab, the Fine-Tuning Lab")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fine-tune a backbone on a data set")
    _add_config_options(train)
    train.add_argument("--json", action="store_true", help="print the run's summary as JSON on the last line")
    for name, text in (("datasets", "list the data sets"), ("backbones", "list the backbones"),
                       ("runs", "list the kept runs")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true")
    sub.choices["runs"].add_argument("--delete", metavar="RUN_ID", action=_Once,
                                     help="delete this run and its checkpoint")
    sub.choices["runs"].add_argument("--move-aside", action="store_true",
                                     help="rename a damaged run store to runs.db.damaged-<time> and start an empty one")
    stats = sub.add_parser("stats", help="class counts per split and entropy figures of a data set")
    for name in _STATS_OPTIONS:
        f = next(f for f in cfg.options() if f.name == name)
        stats.add_argument("--" + name.replace("_", "-"), type=cfg.option_type(f), action=_Once, default=f.default,
                           help=f"{f.metadata['help']} (default: {f.default})")
    _add_feature_options(stats)
    stats.add_argument("--json", action="store_true")
    predict = sub.add_parser("predict", help="classify an image with a run's best model")
    fields = {f.name: f for f in dataclasses.fields(cfg.PredictOptions)}
    predict.add_argument("--run", required=True, action=_Once, help=fields["run"].metadata["help"])
    predict.add_argument("image", help=fields["image"].metadata["help"])
    predict.add_argument("--top-k", type=int, action=_Once, default=fields["top_k"].default,
                         help=f"{fields['top_k'].metadata['help']} (default: {fields['top_k'].default})")
    predict.add_argument("--json", action="store_true")
    _add_export(sub)
    _add_sweep(sub)
    _add_probe(sub)
    _add_lr_find(sub)
    _add_explain(sub)
    _add_shift(sub)
    return p


def _add_shift(sub) -> None:
    sh = sub.add_parser("shift", help="a run's val accuracy on corrupted copies of its val images: blur, JPEG, "
                                      "colour jitter, greyscale, rotation, noise, two severities each",
                        description="Inference only: the runs are not changed. Every random draw is seeded by "
                                    "--seed, the corruption, its severity and the image, so the test repeats exactly.")
    sh.add_argument("--run", required=True, action="append", metavar="RUN_ID",
                    help="run id (see `python -m ftlab runs`); give --run again to compare runs")
    sh.add_argument("--seed", type=int, action=_Once, default=0, help="the seed of the corruptions (default: 0)")
    sh.add_argument("--json", action="store_true", help="print the results as JSON on the last line")


def _add_explain(sub) -> None:
    ex = sub.add_parser("explain", help="class activation maps of a run's best model for an image: Grad-CAM for the "
                                        "predicted and the true class, and EigenCAM",
                        description="The maps are taken at the backbone's last spatial block, on the image resized "
                                    "and cropped as the run's evaluation did. Nothing of the run is changed.")
    ex.add_argument("--run", required=True, action=_Once, help="run id (see `python -m ftlab runs`)")
    ex.add_argument("image", nargs="?", default=None, help="an image file (or give --val-image)")
    ex.add_argument("--val-image", type=int, action=_Once, default=None, metavar="K",
                    help="instead of a file: the run's K-th val image (0 is the first), its true class known")
    ex.add_argument("--class", dest="true_class", action=_Once, default=None, metavar="NAME",
                    help="the image's true class, for the second Grad-CAM (default: a val image's own class; a "
                         "file without it gets the map of its second most likely class)")
    ex.add_argument("--out", action=_Once, default=None, metavar="PATH",
                    help="the PNG to write: the image and its three maps side by side (default: "
                         "cam-<run id>.png here)")
    ex.add_argument("--json", action="store_true", help="print the result as JSON on the last line")


# the backbone options of stats' feature-space figures (the data options are _STATS_OPTIONS)
_FEATURE_OPTIONS = ("backbone", "weights", "image_size")


def _add_feature_options(stats: argparse.ArgumentParser) -> None:
    """stats' feature-space figures: off by default, since they need a forward pass over every image (29 s
    for ants/bees on 2 shared cores the first time; the features are kept, so 0.7 s after) where the
    class counts take a fraction of a second."""
    stats.add_argument("--feature-diversity", action=_FlagOnce, default=False,
                       help="also measure diversity in the backbone's feature space: the Vendi score of the "
                            "training split and of each class, near-duplicate pairs within it and across splits, "
                            "each class's spread and the nearest class pairs (default: off; the features are "
                            "computed once per data set and backbone and kept under FTLAB_HOME)")
    stats.add_argument("--drop-duplicates", action=_FlagOnce, default=False,
                       help=next(f for f in cfg.options() if f.name == "drop_duplicates").metadata["help"] +
                       ": count the split a run with --drop-duplicates trains on (default: off)")
    for name in _FEATURE_OPTIONS:
        f = next(f for f in cfg.options() if f.name == name)
        stats.add_argument("--" + name.replace("_", "-"), type=cfg.option_type(f), action=_Once, default=f.default,
                           help=f"with --feature-diversity: {f.metadata['help']} (default: {f.default})")


def _add_sweep(sub) -> None:
    from ftlab import sweep

    sw = sub.add_parser("sweep", help="train one run per freeze strategy (and seed) and compare them",
                        description="Every member is an ordinary kept run tagged with the sweep. The data are decoded "
                                    "once, the frozen prefix is computed once at the shallowest boundary and each "
                                    "deeper one derived from it; members that share nothing run in parallel "
                                    "processes on a multi-core CPU. Every train option applies to every member "
                                    "(--strategy is replaced by --strategies, --seed by --seeds).")
    _add_config_options(sw)
    sw.add_argument("--strategies", action=_Once, default=",".join(sweep.DEFAULT_STRATEGIES), metavar="S,S",
                    help=f"the strategies to compare, a comma list (default: {','.join(sweep.DEFAULT_STRATEGIES)})")
    sw.add_argument("--seeds", action=_Once, default=None, metavar="N,N",
                    help="the seeds of each strategy, e.g. 0,1,2 (default: --seed); the split stays --split-seed's "
                         "(default: --seed), so every member is scored on the same val images")
    sw.add_argument("--per-class", action=_Once, default="", metavar="K,K",
                    help="data efficiency: also train each strategy cheap enough (linear-probe, top-N) on K images "
                         "per class, e.g. 2,5,10,20 (the val split stays whole)")
    sw.add_argument("--workers", type=int, action=_Once, default=0, metavar="N",
                    help=f"at most this many processes (default 0: the core count; 1: all in this one; at most "
                         f"{sweep.MAX_WORKERS})")
    sw.add_argument("--ray", action=_Once, default="", metavar="ADDRESS",
                    help="run the members as Ray tasks on a cluster: auto (the one `ray start` made here, or "
                         "RAY_ADDRESS), HOST:PORT of its head node, ray://HOST:PORT, or local (a Ray started for "
                         "this sweep on this machine); the runs come back to this machine's store")
    sw.add_argument("--ray-cpus", type=int, action=_Once, default=1, metavar="N",
                    help="with --ray: the CPU cores each task asks for, its torch threads (default 1)")
    sw.add_argument("--ray-gpus", type=float, action=_Once, default=0.0, metavar="G",
                    help="with --ray: the GPUs each task asks for (default 0; 1 on a GPU cluster, 0.5 to share one)")
    sw.add_argument("--list", action="store_true", help="list the kept sweeps and stop")
    sw.add_argument("--json", action="store_true", help="print the sweep's summary as JSON on the last line")


def _add_export(sub) -> None:
    from ftlab import export_formats as export  # its names and words: ftlab.export itself imports torch

    ex = sub.add_parser("export", help="write a run's best model as a TorchScript or ONNX file, checked against ftlab",
                        description="The file takes RGB uint8 images (N, 3, H, W) and returns class probabilities "
                                    "(softmax); normalisation, resize and crop are inside it. labels.json beside it "
                                    "names the classes and the preprocessing.")
    ex.add_argument("--run", required=True, action=_Once, help="run id (see `python -m ftlab runs`)")
    ex.add_argument("--format", required=True, action=_Once, choices=export.FORMATS, help="the file's kind")
    ex.add_argument("--quantize", action=_Once, choices=("int8",), default=None,
                    help="int8 weights, kept only within 1 point of float32 validation accuracy. TorchScript: "
                         f"{export.QUANTIZE_HELP['torchscript']}. ONNX: {export.QUANTIZE_HELP['onnx']}")
    ex.add_argument("--out", action=_Once, default=None, metavar="PATH",
                    help="a folder, or a file ending in .pt (torchscript) or .onnx (default: the run's folder's "
                         "export/, file model.pt or model.onnx, model.int8.pt or model.int8.onnx with --quantize)")
    ex.add_argument("--json", action="store_true", help="print the result as JSON on the last line")


def _add_lr_find(sub) -> None:
    from ftlab.explore_options import RULE, FinderOptions

    lf = sub.add_parser("lr-find", help="find a learning rate: an exponential ramp of the rate over the run's "
                                        "trainable blocks (Smith 2015); keeps no run",
                        description=f"Trains the blocks the options train for --steps batches while the rate grows "
                                    f"from --start-lr to --end-lr, and suggests a rate. {RULE}")
    _add_config_options(lf)
    for f in dataclasses.fields(FinderOptions):
        lf.add_argument("--" + f.name.replace("_", "-"), type=int if f.type == "int" else float, action=_Once,
                        default=f.default, help=f"{f.metadata['help']} (default: {f.default:g})")
    lf.add_argument("--json", action="store_true", help="print the result as JSON on the last line")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "train" and os.environ.get("WORLD_SIZE", "").strip() not in ("", "1"):
        # every process torchrun starts would do the same work and write the same records
        return _fail(f"only `train` runs under torchrun (WORLD_SIZE={os.environ['WORLD_SIZE'].strip()}): run "
                     f"`python -m ftlab {args.command}` on its own")
    try:
        return {"train": _train, "datasets": _datasets, "backbones": _backbones, "runs": _runs,
                "stats": _stats, "predict": _predict, "export": _export, "sweep": _sweep,
                "probe": _probe, "lr-find": _lr_find, "explain": _explain,
                "shift": _shift}[args.command](args)
    except SettingError as err:  # an environment setting read where it is used
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130
    except StoreError as err:  # FTLAB_HOME or the run store under it: every command says what to do
        return _fail(str(err), 1)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# --- train ------------------------------------------------------------------------------

def _train(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in cfg.options()}
    config = cfg.TrainConfig(**values)
    from ftlab import distributed

    ranks = distributed.from_env()
    problems = cfg.validate(config)
    if problems:  # every process finds the same problems: the first says them
        return _fail("\n  ".join(["the run cannot start:"] + problems)) if ranks.leader else EXIT_BAD_INPUT
    from ftlab.engine import pick_device, run
    from ftlab.runs import RunStore, new_run_id

    device = distributed.device_for(ranks, pick_device(config.device))
    if problems := distributed.problems(ranks, device):
        return _fail(problems[0]) if ranks.leader else EXIT_BAD_INPUT
    stop = threading.Event()
    # Ctrl-C stops after the batch; under torchrun so does its SIGTERM (another process ended): the record says so
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in ((signal.SIGINT, signal.SIGTERM) if ranks.active else (signal.SIGINT,))}
    try:
        if ranks.active:
            distributed.start(ranks, device)
        run_id = distributed.broadcast(new_run_id()) if ranks.active else None
        summary = run(config, store=RunStore(), emit=Progress() if ranks.leader else _errors_only, stop=stop,
                      run_id=run_id, ranks=ranks)
    except Exception as err:  # the process group could not start, or a rank left before the run began
        if not (ranks.active and distributed.is_distributed_error(err)):
            raise
        return _fail(distributed.failure_message(err), 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        distributed.end()
    if not ranks.leader:
        pass
    elif args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    # a loss that became inf or nan is a fault of the run (its best checkpoint, if any, is kept): a script sees it
    return 1 if summary.get("stopped_reason") in ("error", "non_finite_loss") else 0


def _lr_find(args: argparse.Namespace) -> int:
    from ftlab import data
    from ftlab.engine import user_message
    from ftlab.lr_find import FinderOptions, find_lr

    config = cfg.TrainConfig(**{f.name: getattr(args, f.name) for f in cfg.options()})
    options = FinderOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinderOptions)})
    problems = cfg.validate(config) + options.problems(config)
    if problems:
        return _fail("\n  ".join(["the learning-rate finder cannot start:"] + problems))
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C ends the ramp after the step
    try:
        result = find_lr(config, options, say=lambda m: print(f"[ftlab] {printable(m)}", file=sys.stderr),
                         should_stop=stop.is_set)
    except (ValueError, data.DataError) as err:
        return _fail(str(err))
    except Exception as err:  # a sentence, never a traceback
        return _fail(user_message(err, config.batch_size), 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    return _print_result(result, args.json)


def _print_result(result, as_json: bool) -> int:
    """A probe's or a finder's result: its JSON on one line, or its lines of text."""
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        for line in result.lines():
            print(printable(line))
    return 0


def _errors_only(e: events.Event) -> None:
    """What a torchrun process other than rank 0 prints: its failure, if it fails."""
    if isinstance(e, events.RunFailed):
        print(f"[ftlab] failed: {e.message}", file=sys.stderr)


class Progress:
    """A one-line progress bar on stderr, and a line per epoch."""

    def __call__(self, e: events.Event) -> None:
        out = sys.stderr
        if isinstance(e, events.Preparing):
            print(f"[ftlab] {e.message}", file=out)
        elif isinstance(e, events.RunStarted):
            sizes = ", ".join(f"{k} {v}" for k, v in e.split_sizes.items() if v)
            print(f"[ftlab] run {e.run_id} on {e.device}: {len(e.classes)} classes ({sizes}); "
                  f"{e.trainable_params:,} of {e.total_params:,} parameters train", file=out)
            if e.skipped:
                print(f"[ftlab] warning: skipped {len(e.skipped)} file(s) that could not be decoded, e.g. "
                      f"{e.skipped[0]}", file=out)
        elif isinstance(e, events.Step):
            width = 24
            filled = int(width * e.step / e.steps)
            print(f"\repoch {e.epoch} [{'#' * filled}{'.' * (width - filled)}] {e.step}/{e.steps} "
                  f"loss {e.loss:.3f} {e.images_per_second:.0f} img/s {explore.format_duration(e.seconds_left)} left ",
                  end="", file=out, flush=True)
        elif isinstance(e, events.EpochEnded):
            print(f"\repoch {e.epoch}/{e.epochs}: train loss {e.train_loss:.3f} acc {e.train_accuracy:.3f} | "
                  f"val loss {e.val_loss:.3f} acc {e.val_accuracy:.3f}{' *' if e.is_best else ''} | "
                  f"{e.images_per_second:.0f} img/s, {explore.format_duration(e.seconds)}"
                  + ("" if e.l2sp_beta is None else f" | L2-SP beta {e.l2sp_beta:g}") + " " * 20, file=out)
            if e.tasks:
                print("  val acc per task: " + tasks.summary_text({n: f["val_accuracy"] for n, f in e.tasks.items()})
                      + " | weights " + ", ".join(f"{n} {f['weight']:.3f}" for n, f in e.tasks.items()), file=out)
        elif isinstance(e, events.RunStopped):
            print(f"[ftlab] stopped: {e.message}", file=out)
        elif isinstance(e, events.RunFailed):
            print(f"[ftlab] failed: {e.message}", file=out)


def _print_summary(s: dict) -> None:
    test = "none" if s.get("test_accuracy") is None else f"{s['test_accuracy']:.3f}"
    best = "none" if s.get("best_val_accuracy") is None else f"{s['best_val_accuracy']:.3f}"
    caching = f" (and {explore.format_duration(s['cache_seconds'])} caching)" if s.get("cache_seconds") else ""
    print(f"run {s['run_id']}: {s['stopped_reason']} after {s['epochs_run']} epoch{'' if s['epochs_run'] == 1 else 's'}; best val accuracy {best}, "
          f"test accuracy {test}; {explore.format_duration(s['train_seconds'])} training{caching}, "
          f"{s['images_per_second']:.0f} img/s" + (f"; {explore.precision_text(s)}" if s.get("precision") else "")
          + _teacher_text(s))


def _teacher_text(s: dict) -> str:
    """"; distilled from run ID (val accuracy 0.950 on this run's val split)", or "" without a teacher."""
    if (t := explore.teacher_of(s)) is None:
        return ""
    acc = "" if t["val_accuracy"] is None else f" (its val accuracy {t['val_accuracy']:.3f})"
    return f"; distilled from run {t['run_id']}{acc}"


# --- sweep ------------------------------------------------------------------------------

def _sweep(args: argparse.Namespace) -> int:
    from ftlab import sweep
    from ftlab.runs import RunStore

    store = RunStore()
    if args.list:
        return _list_sweeps(store, args.json)
    values = {f.name: getattr(args, f.name) for f in cfg.options()}
    base = cfg.TrainConfig(**values)
    plan, problems = sweep.checked_plan(base, args.strategies, args.seeds if args.seeds is not None else str(base.seed),
                                        workers=args.workers, per_class=args.per_class)
    if plan is None:
        return _fail("\n  ".join(["the sweep cannot start:"] + problems))
    if args.ray:
        from ftlab import ray_sweep

        plan, problems = ray_sweep.checked(plan, args.ray, args.ray_cpus, args.ray_gpus)
        if plan is None:
            return _fail("\n  ".join(["the sweep cannot start:"] + problems))
    elif args.ray_cpus != 1 or args.ray_gpus:
        return _fail("--ray-cpus and --ray-gpus are what each Ray task asks for: give them with --ray ADDRESS")
    for line in sweep.plan_lines(plan):
        print(f"[ftlab] {printable(line)}", file=sys.stderr)
    ended = []

    def on_member(member, summary: dict) -> None:
        ended.append(member)
        best = summary.get("best_val_accuracy")
        print(f"[ftlab] {len(ended)}/{len(plan.members)} {member.strategy} seed {member.seed} ({member.run_id}): "
              f"{summary.get('status')}, best val {'none' if best is None else f'{best:.3f}'}, "
              f"{summary.get('cpu_seconds', 0):.0f} CPU-s", file=sys.stderr)

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        progress = sweep.progress_sayer(plan, lambda line: print(f"[ftlab] {printable(line)}", file=sys.stderr)) \
            if plan.ray else Progress() if len(plan.groups) == 1 else (lambda e: None)
        outcome = sweep.start(plan, store=store, stop=stop, on_member=on_member, emit=progress)
        if plan.ray and outcome.status == "failed" and not outcome.summaries:
            return _fail(outcome.message)  # the cluster could not be joined: said, nothing kept
    finally:
        signal.signal(signal.SIGINT, previous)
    report = sweep.report(plan.sweep_id, store, wall_seconds=outcome.wall_seconds)
    if args.json:
        print(json.dumps(report))
    else:
        print(sweep.report_text(report))
    return 0 if outcome.status == "finished" else 1


def _list_sweeps(store, as_json: bool) -> int:
    rows = [{"id": s["id"], "status": s["status"], "members": len(s["plan"].get("members", [])),
             "strategies": sorted({m["strategy"] for m in s["plan"].get("members", [])}),
             "dataset": s["plan"].get("base", {}).get("dataset"), "backbone": s["plan"].get("base", {}).get("backbone")}
            for s in store.sweeps()]
    if as_json:
        print(json.dumps(rows))
    elif not rows:
        print("no sweeps yet: `python -m ftlab sweep --dataset digits` runs one")
    for r in rows if not as_json else ():
        print(f"{r['id']}  {r['status']:9}  {r['members']:3} runs  {r['dataset']} · {r['backbone']} · "
              f"{', '.join(r['strategies'])}")
    return 0


# --- listings ---------------------------------------------------------------------------

def _datasets(args: argparse.Namespace) -> int:
    from ftlab import data

    rows = [dataclasses.asdict(d) for d in data.list_datasets()]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['name']:<14} {r['kind']:<9} {r['description']}")
        print("\nOr give the path of a folder or .zip with one subfolder per class (optionally in train/ val/ test/); "
              "a labels.csv beside the class folders (header file,task_a,task_b,...; one row per image, its path "
              "like ants/x.jpg) adds further tasks.")
    return 0


def _backbones(args: argparse.Namespace) -> int:
    from ftlab import catalogue  # the facts `ftlab.backbones` registers, without torch

    rows = []
    for spec in catalogue.CATALOGUE:
        rows.append({"name": spec.name, "description": spec.description, "default_size": spec.default_size,
                     "imagenet": spec.has_imagenet, "imagenet_offline": catalogue.weights_here(spec),
                     "imagenet_weights": catalogue.weights_words(spec)})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            weights = f"ImageNet weights: {r['imagenet_weights']}"
            print(f"{r['name']:<20} {r['default_size']:>4} px  {weights:<45} {r['description']}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from ftlab.runs import RunStore

    store = RunStore()
    if args.move_aside:
        print(f"moved the damaged run store to {store.move_aside()}; the next run starts an empty one")
        return 0
    store.mark_interrupted()  # runs whose process died show as interrupted, not running forever
    if args.delete is not None:  # `--delete ""` names no run: it is not a listing
        try:
            store.delete(args.delete)
        except KeyError as err:
            return _fail(err.args[0], 1)
        print(f"deleted {args.delete}")
        return 0
    runs = store.list()
    if args.json:
        print(json.dumps([{"id": r.id, "label": explore.record_label(r, with_id=False), "status": r.status,
                           "dataset": r.dataset, "backbone": r.backbone, "strategy": r.strategy,
                           "sweep": explore.sweep_of(r), **r.summary}
                          for r in runs]))
        return 0
    for r in runs:
        best = r.summary.get("best_val_accuracy")
        line = (f"{r.id}  {r.status:<11} val {format(best, '.3f') if isinstance(best, (int, float)) else '-    '}  "
                f"{explore.record_label(r, with_id=False)}")
        print(printable(line))  # a non-UTF-8 path prints as escapes
    if not runs:
        print("no runs yet: `python -m ftlab train` makes one")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from ftlab import data, diversity, explore

    taken = _STATS_OPTIONS + (_FEATURE_OPTIONS if args.feature_diversity or args.drop_duplicates else ())
    config = cfg.TrainConfig(**{name: getattr(args, name) for name in taken}, drop_duplicates=args.drop_duplicates)
    problems = cfg.validate(config, only=taken)
    if args.feature_diversity or args.drop_duplicates:
        problems += _backbone_problems(config)
    if problems:
        return _fail("\n  ".join(["the figures cannot be computed:"] + problems))
    try:
        ds = data.load_for(config)
        split = data.split_for(config, ds)
        found = _feature_figures(config, ds) if args.feature_diversity else None
    except (data.DataError, ValueError) as err:  # ValueError: weights that cannot be had here
        return _fail(str(err))
    for note in ds.notes:
        print(f"warning: {note}", file=sys.stderr)
    k = len(ds.classes)
    # every task's counts and figures, the first task's also at the top as before there were several
    tasks = {name: _task_stats(classes, labels, split) for name, classes, labels in explore.data_tasks(ds)}
    counts, figures = tasks[ds.task]["counts"], tasks[ds.task]["figures"]
    tips = [dataclasses.asdict(s) for s in diversity.suggestions(counts["train"])]
    out = {"dataset": ds.name, "classes": list(ds.classes), "num_classes": k, "counts": counts,
           "figures": figures, "suggestions": tips, "notes": list(ds.notes), "task": ds.task, "tasks": tasks}
    if found is not None:
        out["feature_diversity"] = found[0]
        out["suggestions"] += found[1]
    if args.json:
        print(json.dumps(out, default=float))
        return 0
    print(f"{ds.name}: {k} classes, {len(ds)} images ({ds.source})")
    for name, task in tasks.items():
        if ds.tasks:
            print(f"\ntask {name}: {task['num_classes']} classes")
        print(f"{'class':<20}" + "".join(f"{s:>8}" for s in ("train", "val", "test")))
        for i, cls in enumerate(task["classes"]):
            print(f"{cls[:20]:<20}" + "".join(f"{task['counts'][s][i]:>8}" for s in ("train", "val", "test")))
        for split_name, f in task["figures"].items():
            print(f"{split_name:>5}: H = {f['entropy_nats']:.3f} nats = {f['entropy_bits']:.3f} bits, normalised "
                  f"{f['normalised_entropy']:.3f}, effective classes {f['effective_classes']:.2f}, "
                  f"imbalance {f['imbalance_ratio']:.2f}")
    if found is not None:
        _print_feature_figures(found[0])
    if ds.tasks and tips:
        print(f"\nsuggestions, from the first task ({ds.task}):")
    for t in out["suggestions"]:
        print(f"suggestion: {t['title']}. {t['reason']}")
    return 0


def _backbone_problems(config: cfg.TrainConfig) -> list[str]:
    """The backbone, its weights and the image size of stats' feature figures (train's checks of them)."""
    problems = cfg.validate(config, only=_FEATURE_OPTIONS)
    return problems or cfg._check_names(config)


def _feature_figures(config: cfg.TrainConfig, ds) -> tuple[dict, list[dict]]:
    """stats' ``feature_diversity`` object and the suggestions the figures make."""
    from ftlab import feature_diversity, features

    report, _ = features.figures(config, ds, say=lambda m: print(m, file=sys.stderr))
    return report.to_dict(), [dataclasses.asdict(s) for s in feature_diversity.suggestions(report)]


def _print_feature_figures(f: dict) -> None:
    print(f"\nin {f['backbone']}'s feature space ({f['weights']}, {f['image_size']} px): Vendi score of the "
          f"{f['train_images']} training images {f['vendi']:.1f} ({f['share']:.0%} of them distinct)")
    for c in f["classes"]:
        print(f"  {printable(c['name'])[:20]:<20} Vendi {c['vendi']:7.1f} of {c['images']:>6} images, spread "
              f"{c['spread']:.3f}")
    print(f"near-duplicates (cosine similarity >= {f['threshold']:g}): {f['within_count']} pair(s) within train, "
          f"{f['across_count']} across splits")
    for p in f["across"][:10] + f["within"][:10]:
        print(f"  {p['split_a']} #{p['index_a']} ~ {p['split_b']} #{p['index_b']}  {p['similarity']:.3f}")
    for p in f["nearest"][:3]:
        print(f"nearest classes: {printable(p['a'])} and {printable(p['b'])}: {p['mixed']:.0%} of their images "
              "have their nearest neighbour in the other")


def _task_stats(classes: tuple[str, ...], labels, split) -> dict:
    """One task's classes, images per class in each split and in all, and the figures of each non-empty one."""
    from ftlab import diversity

    counts = {name: diversity.counts_of(labels[getattr(split, name)], len(classes))
              for name in ("train", "val", "test")}
    counts["all"] = [sum(c) for c in zip(*(counts[s] for s in ("train", "val", "test")))]
    figures = {name: dataclasses.asdict(diversity.distribution(c)) for name, c in counts.items() if sum(c)}
    return {"classes": list(classes), "num_classes": len(classes), "counts": counts, "figures": figures}


def _predict(args: argparse.Namespace) -> int:
    from ftlab import data
    from ftlab.predict import Predictor
    from ftlab.checkpoints import CheckpointError

    problems = cfg.validate(cfg.PredictOptions(args.run, args.image, args.top_k))
    if problems:
        return _fail("\n  ".join(["cannot predict:"] + problems))
    try:
        prediction = Predictor.for_run(args.run).predict(args.image, args.top_k)
    except (KeyError, CheckpointError, data.DataError) as err:
        return _fail(err.args[0] if err.args else str(err), 1)
    if args.json:
        print(json.dumps(dataclasses.asdict(prediction)))
    else:
        for name, top in (prediction.tasks or {"": prediction.top}).items():
            if name:
                print(f"{printable(name)}:")  # several tasks: each task's classes under its name
            for label, p in top:
                print(f"{p:7.3f}  {printable(label)}")  # a non-UTF-8 class name prints as escapes
    return 0


def _export(args: argparse.Namespace) -> int:
    from ftlab import data, export, runs
    from ftlab.checkpoints import CheckpointError

    if not args.run.strip():
        return _fail("cannot export: no run given: give a run id (see `python -m ftlab runs`).")
    try:
        runs.check_run_id(args.run)
        result = export.export_run(args.run, args.format, args.quantize or "none", args.out,
                                   say=lambda m: print(f"[ftlab] {m}", file=sys.stderr))
    except (KeyError, CheckpointError, export.ExportError, data.DataError) as err:
        return _fail(err.args[0] if err.args else str(err), 1)
    return _print_result(result, args.json)


# --- explain ----------------------------------------------------------------------------

def _explain(args: argparse.Namespace) -> int:
    from ftlab import data, explain, runs
    from ftlab.checkpoints import CheckpointError
    from ftlab.config import TrainConfig

    if (args.image is None) == (args.val_image is None):
        return _fail("give one image: a file, or --val-image K for the run's K-th val image")
    try:
        runs.check_run_id(args.run)
        store = runs.RunStore()
        explainer = explain.Explainer.for_run(args.run, store)
        true = explain.class_index(explainer.classes, args.true_class)
        if args.val_image is not None:
            record = store.get(args.run)
            pixels, label, name = explain.val_pixels(data.load_for(TrainConfig.from_dict(record.config),
                                                                   download=False), record, args.val_image, explainer)
            true = label if true is None else true
        else:
            pixels, name = explainer.pixels(args.image), Path(args.image).name
        result = explainer.explain(pixels, true, name)
        out = explain.save(result, Path(args.out or f"cam-{args.run}.png"))
    except (KeyError, ValueError, CheckpointError) as err:  # DataError is a ValueError
        return _fail(err.args[0] if err.args else str(err))
    except OSError as err:  # the --out file cannot be written
        return _fail(f"the maps cannot be written: {err.strerror or err}")
    if args.json:
        print(json.dumps({**result.to_dict(), "out": str(out)}))
    else:
        top = result.predicted
        print(f"{printable(name)}: predicted {printable(result.classes[top])} ({result.probabilities[top]:.1%}), "
              f"maps of block {result.target_block} in {explore.format_duration(result.seconds)}")
        for note in result.notes:
            print(f"note: {note}")
        print(f"wrote {out}")
    return 0


def _shift(args: argparse.Namespace) -> int:
    from ftlab import runs, shift
    from ftlab.checkpoints import CheckpointError
    from ftlab.errors import StopRequested

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C stops between batches
    results = []
    try:
        store = runs.RunStore()
        for run_id in dict.fromkeys(args.run):  # each run once, in the order given
            runs.check_run_id(run_id)
            results.append(shift.run_shift(run_id, store, seed=args.seed, should_stop=stop.is_set,
                                           say=lambda m: print(f"[ftlab] {run_id}: {printable(m)}", file=sys.stderr)))
    except StopRequested:
        return _fail("stopped by the user", 1)
    except (KeyError, ValueError, CheckpointError) as err:  # DataError is a ValueError
        return _fail(err.args[0] if err.args else str(err))
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in results], "table": shift.table(results)}))
        return 0
    for r in results:
        for line in r.lines():
            print(printable(line))
    return 0


# --- probe ------------------------------------------------------------------------------

def _add_probe(sub) -> None:
    from ftlab import explore_options as probe  # the probe's options and words, without torch

    pr = sub.add_parser("probe", help="where the class information lives: a linear probe at every block of a "
                                      "backbone, and how many images per class it needs",
                        description="A logistic regression on the pooled output of each backbone block (one "
                                    "forward pass over the train and val images), scored on val with a 95% "
                                    "bootstrap interval; then the same at one block on k images per class.")
    _add_config_options(pr, only=probe.CONFIG_FIELDS)
    for f in dataclasses.fields(probe.ProbeOptions):
        meta = f.metadata
        shown = [f"default: {f.default}"] if f.default != "" else []
        shown += [] if meta["lo"] is None else [f"range {meta['lo']:g} to {meta['hi']:g}"]
        words = meta["help"] + (f" ({'; '.join(shown)})" if shown else "")
        pr.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), action=_Once, default=f.default,
                        metavar="C" if f.name == "c" else None, help=words.replace("%", "%%"))
    pr.add_argument("--json", action="store_true", help="print the result as JSON on the last line")


def _probe(args: argparse.Namespace) -> int:
    from ftlab import probe
    from ftlab.errors import StopRequested

    config = cfg.TrainConfig(**{name: getattr(args, name) for name in probe.CONFIG_FIELDS})
    options = probe.ProbeOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(probe.ProbeOptions)})
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C stops between batches
    try:
        result = probe.run_probe(config, options, say=lambda m: print(f"[ftlab] {printable(m)}", file=sys.stderr),
                                 should_stop=stop.is_set)
    except StopRequested:
        return _fail("stopped by the user", 1)
    except ValueError as err:  # bad options or data (DataError is one), in a sentence
        return _fail(str(err))
    finally:
        signal.signal(signal.SIGINT, previous)
    return _print_result(result, args.json)
