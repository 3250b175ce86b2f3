"""The command line starts without the heavy libraries it does not use: ``runs``, ``datasets``,
``backbones``, ``--help`` and every command's ``--help`` import neither torch nor torchvision nor
timm (nor scipy or scikit-learn), and print what the library's own functions give. The facts the
listings read without torch (ftlab.catalogue) are checked against torchvision's and timm's.

Wall times are not asserted here; bench/bench_startup.py measures them."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab import backbones, catalogue, data, explore
from ftlab.config import TrainConfig
from ftlab.runs import RunStore, new_run_id

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch", "torchvision", "timm"}
HEAVY = TORCH | {"scipy", "sklearn"}  # a second and more each: what a listing must not wait for
# runs ftlab.cli.main as `python -m ftlab` would, then writes the top-level modules it loaded
PROBE = """
import json, os, sys
from ftlab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as end:  # --help, and argparse's usage errors
    code = end.code
with open(os.environ["PROBE_OUT"], "w") as fh:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), fh)
sys.exit(code)
"""


def _probe(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    out = tmp_path / "modules.json"
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "PROBE_OUT": str(out), **env}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          env=environ, timeout=120)
    assert out.is_file(), done.stderr[-2000:]
    return done, set(json.loads(out.read_text()))


COMMANDS = [["runs"], ["runs", "--json"], ["datasets"], ["datasets", "--json"], ["backbones"], ["backbones", "--json"],
            ["--help"], ["train", "--help"], ["stats", "--help"], ["predict", "--help"], ["export", "--help"],
            ["runs", "--help"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_listings_and_help_import_no_torch_torchvision_or_timm(args, tmp_path):
    done, loaded = _probe(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
    assert loaded & HEAVY == set(), f"`python -m ftlab {' '.join(args)}` imported {sorted(loaded & HEAVY)}"
    assert "ftlab" in loaded  # the probe ran the command


def test_train_still_imports_what_it_needs(tmp_path):
    """`train` itself loads torch when it runs (here: its options are refused before any work)."""
    done, loaded = _probe(["train", "--epochs", "0"], tmp_path)
    assert done.returncode == 2 and "epochs must be between 1 and 1,000" in done.stderr
    assert "torch" in loaded  # the device check of a whole config asks torch


def test_the_backbones_listing_is_the_registrys(tmp_path, monkeypatch):
    done, _ = _probe(["backbones", "--json"], tmp_path)
    rows = json.loads(done.stdout.splitlines()[-1])
    expected = [{"name": n, "description": backbones.get_spec(n).description,
                 "default_size": backbones.get_spec(n).default_size, "imagenet": backbones.get_spec(n).has_imagenet,
                 "imagenet_offline": backbones.weights_available_offline(n),
                 "imagenet_weights": backbones.weights_status(n)} for n in backbones.list_backbones()]
    assert rows == expected
    text, _ = _probe(["backbones"], tmp_path)
    assert [line.split()[0] for line in text.stdout.splitlines()] == backbones.list_backbones()


def test_the_backbones_listing_sees_weights_put_into_torchs_hub_folder(tmp_path):
    """The offline check without torch looks where torch would: a file in $TORCH_HOME/hub/checkpoints."""
    torch_home = tmp_path / "torch"
    done, _ = _probe(["backbones", "--json"], tmp_path, TORCH_HOME=str(torch_home))
    before = {r["name"]: r["imagenet_offline"] for r in json.loads(done.stdout.splitlines()[-1])}
    assert before["resnet18"] is False and before["efficientnet_lite0"] is True and before["small_cnn"] is False
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / backbones.get_spec("resnet18").weights_file).write_bytes(b"x")
    done, loaded = _probe(["backbones", "--json"], tmp_path, TORCH_HOME=str(torch_home))
    after = {r["name"]: r for r in json.loads(done.stdout.splitlines()[-1])}
    assert after["resnet18"]["imagenet_offline"] is True and after["resnet18"]["imagenet_weights"] == "here, offline"
    assert after["resnet50"]["imagenet_offline"] is False and not loaded & TORCH


def test_the_datasets_listing_is_the_registrys(tmp_path):
    done, _ = _probe(["datasets", "--json"], tmp_path)
    assert json.loads(done.stdout.splitlines()[-1]) == [dataclasses.asdict(d) for d in data.list_datasets()]


def test_the_runs_listing_labels_runs_as_the_library_does(tmp_path):
    home = tmp_path / "home"
    store = RunStore(home)
    configs = [TrainConfig(dataset="shapes", backbone="small_cnn", weights="random", epochs=2),
               TrainConfig(dataset="/data/my pets.zip", backbone="resnet18", strategy="top-2", lr=0.01,
                           head=(512, 128), activation="gelu", truncate_after="layer3", weights="/w/best.pt"),
               TrainConfig(backbone="efficientnet_lite0", frozen_blocks=("stem", "stage1"), image_size=96,
                           adapter_after=("stage5",)),
               TrainConfig(name="my first run")]
    ids = []
    for i, config in enumerate(configs):
        rid = new_run_id()
        store.create(rid, config.to_dict())
        store.finish(rid, "finished", {"best_val_accuracy": 0.5 + i / 10})
        ids.append(rid)
    done, loaded = _probe(["runs", "--json"], tmp_path, FTLAB_HOME=str(home))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.splitlines()[-1])
    records = RunStore(home).list()
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert [r["label"] for r in rows] == [explore.record_label(r, with_id=False) for r in records]
    assert "head 512,128 gelu; truncated after layer3" in " ".join(r["label"] for r in rows)
    text, _ = _probe(["runs"], tmp_path, FTLAB_HOME=str(home))
    for r in records:
        assert f"{r.id}  {r.status:<11} val {r.summary['best_val_accuracy']:.3f}  " \
               f"{explore.record_label(r, with_id=False)}" in text.stdout
    assert not loaded & HEAVY


# --- the catalogue's facts against torchvision's and timm's ---------------------------------------

def test_the_catalogue_is_the_registry():
    """Each registered spec is its catalogue entry and a builder, field for field."""
    facts = [f.name for f in dataclasses.fields(catalogue.BackboneFacts)]
    assert [f.name for f in dataclasses.fields(backbones.BackboneSpec) if f.name != "blocks"] == facts
    assert backbones.list_backbones() == [f.name for f in catalogue.CATALOGUE]
    for entry in catalogue.CATALOGUE:
        spec = backbones.get_spec(entry.name)
        assert {k: getattr(spec, k) for k in facts} == dataclasses.asdict(entry)
        assert callable(spec.blocks)


@pytest.mark.parametrize("entry", [e for e in catalogue.CATALOGUE if e.name not in ("efficientnet_lite0", "small_cnn")],
                         ids=lambda e: e.name)
def test_torchvision_weights_facts_are_torchvisions_own(entry):
    import torchvision

    weights = torchvision.models.get_model_weights(entry.name).DEFAULT
    t = weights.transforms()
    assert entry.weights_file == Path(weights.url).name
    assert entry.crop_pct == t.crop_size[0] / t.resize_size[0]
    assert (entry.mean, entry.std) == (tuple(t.mean), tuple(t.std))
    assert entry.has_imagenet


def test_lite0_facts_are_timms_and_the_shipped_files():
    import timm

    entry = next(e for e in catalogue.CATALOGUE if e.name == "efficientnet_lite0")
    assert entry.crop_pct == float(timm.models.get_pretrained_cfg("tf_efficientnet_lite0").crop_pct)
    assert catalogue.lite0_file().name == entry.weights_file and catalogue.lite0_file().is_file()


@pytest.mark.parametrize("env", [{}, {"TORCH_HOME": "{tmp}/th"}, {"XDG_CACHE_HOME": "{tmp}/xdg"},
                                 {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "{tmp}/xdg"}], ids=str)
def test_the_hub_folder_without_torch_is_torchs(env, tmp_path, monkeypatch):
    import torch

    environ = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    script = "import sys; from ftlab import catalogue; print(catalogue.hub_dir()); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    where, imported = done.stdout.split()
    assert imported == "False"
    assert Path(where) == Path(torch.hub.get_dir()) == catalogue.hub_dir()


def test_the_usage_line_names_the_command_as_it_was_called(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ftlab", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FTLAB_HOME": str(tmp_path)})
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m ftlab ")
