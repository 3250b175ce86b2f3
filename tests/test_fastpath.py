"""The frozen prefix's fast function: equal to the eager prefix, never raising, leaving the model as it was."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ftlab import backbones, cache, fastpath
from ftlab.freeze import apply_freeze

ROOT = Path(__file__).resolve().parents[1]


def prefix_of(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return backbones.create_model(name, 3, "random")[:-1]


def batch(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference(prefix: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The eager fp32 prefix in eval mode, computed here rather than by the module under test."""
    training = {m: m.training for m in prefix.modules()}
    prefix.eval()
    with torch.no_grad():
        out = prefix(x)
    for m, flag in training.items():
        m.training = flag
    return out


def max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name,size", [("small_cnn", 32), ("resnet18", 32), ("efficientnet_lite0", 32)])
def test_frozen_graph_in_fp32_equals_eager(name, size):
    prefix = prefix_of(name)
    x = batch(4, size)
    fn = fastpath.frozen_script(prefix, x[:2])
    assert max_rel(fn(x), reference(prefix, x)) <= fastpath.TOLERANCE["fp32"]
    acc = fastpath.accelerate(prefix, x)
    assert acc.check.passed and acc.precision == "fp32" and acc.check.max_rel <= 1e-4
    assert max_rel(acc.fn(x), reference(prefix, x)) <= 1e-4


@pytest.mark.parametrize("name,size", [("small_cnn", 32), ("resnet18", 32)])
def test_bf16_passes_its_looser_tolerance_and_is_not_exact(name, size):
    prefix = prefix_of(name)
    x = batch(4, size)
    acc = fastpath.accelerate(prefix, x, precision="bf16")
    assert acc.check.passed and acc.precision == "bf16" and acc.check.tolerance == fastpath.TOLERANCE["bf16"]
    out = acc.fn(x)
    rel = max_rel(out, reference(prefix, x))
    # bf16 really ran (fp32 would be within 1e-6), and within its tolerance
    assert 1e-5 < rel <= fastpath.TOLERANCE["bf16"]
    assert "bf16 autocast" in acc.how


def test_frozen_graph_in_bf16_computes_in_bf16():
    prefix = prefix_of("small_cnn")
    x = batch(4, 32)
    out = fastpath.frozen_script(prefix, x[:2], "bf16")(x)
    assert out.dtype == torch.bfloat16
    assert max_rel(out, reference(prefix, x)) <= fastpath.TOLERANCE["bf16"]


def test_another_batch_size_than_the_sample_gives_the_same_answer():
    # the cache's last batch is smaller than the others; the graph is traced on two images
    prefix = prefix_of("resnet18")
    sample, last = batch(6, 32), batch(3, 32, seed=2)
    acc = fastpath.accelerate(prefix, sample)
    assert max_rel(acc.fn(last), reference(prefix, last)) <= 1e-4
    graph = fastpath.frozen_script(prefix, sample[:2])
    assert max_rel(graph(last[:1]), reference(prefix, last[:1])) <= 1e-4


def test_another_image_size_runs_eager_and_is_right():
    prefix = prefix_of("efficientnet_lite0")  # "same" padding: the image size is baked into the graph
    acc = fastpath.accelerate(prefix, batch(4, 32))
    other = batch(2, 48)
    assert max_rel(acc.fn(other), reference(prefix, other)) <= 1e-4


class Branchy(nn.Module):
    """Data-dependent Python control flow: a trace would bake in one branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y * 2 if y.mean() > 0 else -y


class Refuses(nn.Module):
    """A module that cannot be traced at all."""

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here")
        return x.flatten(1).relu()


def test_data_dependent_control_flow_falls_back_to_eager_with_the_reason():
    torch.manual_seed(0)
    prefix = nn.Sequential(Branchy())
    x = batch(4, 16)
    acc = fastpath.accelerate(prefix, x)
    assert not acc.fast and "could not be built" in acc.fallback and "TracerWarning" in acc.fallback
    assert "eager" in acc.how and acc.fallback in acc.note()
    for inputs in (x, -x * 5):  # the other branch too: a baked-in trace would get one of them wrong
        # channels-last convolutions sum in another order (on AMD EPYC, differences of 1e-6 of the scale)
        assert torch.allclose(acc.fn(inputs), reference(prefix, inputs), rtol=1e-4, atol=1e-5)


def test_a_module_that_raises_under_tracing_falls_back_and_is_right():
    prefix = nn.Sequential(nn.Conv2d(3, 4, 3), Refuses())
    x = batch(3, 16)
    acc = fastpath.accelerate(prefix, x, precision="bf16")
    assert "no tracing here" in acc.fallback and "no tracing here" in acc.note()
    assert acc.check.passed and max_rel(acc.fn(x), reference(prefix, x)) <= fastpath.TOLERANCE["bf16"]


def test_a_wrong_graph_fails_the_check_and_eager_is_used(monkeypatch):
    prefix = prefix_of("small_cnn")
    x = batch(4, 32)
    good = fastpath.frozen_script

    def off_by_a_little(*args, **kw):
        fn = good(*args, **kw)
        return lambda inputs: fn(inputs) * 1.01  # 1% off: fine for bf16, not for fp32
    monkeypatch.setattr(fastpath, "frozen_script", off_by_a_little)
    acc = fastpath.accelerate(prefix, x)
    assert not acc.fast and "off by 1.0e-02" in acc.fallback and acc.how.startswith("the eager prefix")
    assert torch.allclose(acc.fn(x), reference(prefix, x))


def test_low_precision_that_fails_its_check_falls_back_to_fp32():
    prefix = prefix_of("small_cnn")
    x = batch(4, 32)
    acc = fastpath.accelerate(prefix, x, precision="bf16", tolerance=1e-7)  # tighter than bf16 can be
    assert acc.precision == "fp32" and "so fp32" in acc.fallback and acc.check.passed
    assert max_rel(acc.fn(x), reference(prefix, x)) <= 1e-6  # fp32: the rounding of another memory layout at most


def test_the_callers_module_is_left_as_it_was():
    torch.manual_seed(0)
    model = backbones.create_model("small_cnn", 3, "random")
    apply_freeze(model, frozenset(model.block_names[:3]))
    model.train()  # frozen blocks in eval (bn_frozen), the rest in train mode
    prefix = model[:4]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    formats = {k: v.stride() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    x = batch(4, 32)
    for precision in fastpath.PRECISIONS:
        acc = fastpath.accelerate(prefix, x, precision=precision)
        acc.fn(x)
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(after[k].numpy().tobytes() == v.numpy().tobytes() and after[k].dtype == v.dtype
               for k, v in state.items())  # byte for byte: freezing folded BN into its own copies
    assert {k: v.stride() for k, v in after.items()} == formats
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert any(flags.values()) and not all(flags.values())  # the test really had both modes to keep


def test_unknown_precision_is_refused_in_words():
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        fastpath.accelerate(prefix_of("small_cnn"), batch(2, 32), precision="int8")


def test_relative_error_is_relative_to_the_output_scale():
    assert fastpath.relative_error(torch.tensor([10.0, 0.0]), torch.tensor([9.0, 0.001])) == pytest.approx((1.0, 1 / 9))
    assert fastpath.relative_error(torch.zeros(2), torch.zeros(2)) == (0.0, 0.0)
    assert fastpath.relative_error(torch.zeros(2), torch.zeros(3))[1] == float("inf")


def test_the_note_prints_under_a_strict_utf8_stdout():
    code = ("import torch; from torch import nn; from ftlab import fastpath; "
            "torch.manual_seed(0); p = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()); "
            "a = fastpath.accelerate(p, torch.randn(3, 3, 12, 12)); print(a.note())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONIOENCODING": "utf-8:strict", "PATH": "", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the frozen prefix ran as ") and "on a batch of 3" in out.stdout


def test_the_accelerated_prefix_caches_what_the_eager_prefix_caches():
    # through ftlab.cache.compute, as the caching pass runs it: batches of 4, the last one of 2
    prefix = prefix_of("resnet18")
    images = batch(10, 32, seed=3)
    acc = fastpath.accelerate(prefix, images[:4])
    fast = cache.compute(acc.as_module(), images, lambda x: x, batch_size=4, dtype=torch.float32)
    slow = cache.compute(prefix, images, lambda x: x, batch_size=4, dtype=torch.float32)
    assert fast.shape == slow.shape == (10, 512)
    assert max_rel(fast, slow) <= 1e-4


def test_on_a_cpu_the_graph_is_fused_by_onednn_and_the_switch_is_left_off():
    prefix = prefix_of("small_cnn")
    x = batch(4, 32)
    acc = fastpath.accelerate(prefix, x)
    assert "oneDNN graph fusion" in acc.how and acc.fast and acc.fallback == ""
    for n in (4, 3, 1, 3):  # new batch shapes re-profile the graph: every call still right
        assert max_rel(acc.fn(x[:n]), reference(prefix, x[:n])) <= 1e-4
    assert not torch.jit.onednn_fusion_enabled()
    plain = fastpath.accelerate(prefix, x, onednn=False)
    assert plain.fast and "oneDNN" not in plain.how and plain.fallback == ""


def test_when_onednn_fusion_fails_the_plain_frozen_graph_runs(monkeypatch):
    prefix = prefix_of("small_cnn")
    x = batch(4, 32)
    good = fastpath.frozen_script

    def no_onednn(*args, onednn=False, **kw):
        if onednn:
            raise RuntimeError("LLGA unavailable")
        return good(*args, **kw)
    monkeypatch.setattr(fastpath, "frozen_script", no_onednn)
    acc = fastpath.accelerate(prefix, x, precision="bf16")
    assert acc.fast and "oneDNN" not in acc.how and "torch.jit.freeze" in acc.how
    assert "fused by oneDNN could not be built: RuntimeError: LLGA unavailable" in acc.note()
    assert max_rel(acc.fn(x), reference(prefix, x)) <= fastpath.TOLERANCE["bf16"]
