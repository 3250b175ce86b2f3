"""The Data page's "Diversity in feature space": measured on request, its figures, the map's selection
showing thumbnails, a planted copy listed, dropping the duplicates from the run, and the suggestions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from ftlab import data, features
from ftlab.data.shapes import ShapesOptions, make_shapes
from ui import charts as ui_charts, keys as K
from ui.session import current_config

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def _isolated(app_env):
    """Every test here runs the app: conftest's app_env (its own data, no cache or job left over)."""


def data_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("app_pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def folder_with_a_copy(root: Path) -> tuple[Path, str, str]:
    """Generated shapes as PNG files in train/ and val/ class folders, and an exact copy of a training
    image in val: (folder, copy, original)."""
    ds = make_shapes(ShapesOptions(num_classes=2, per_class=10, noise=0.15, seed=3))
    for i, (pixels, label) in enumerate(zip(ds._pixels, ds.labels)):
        split = "val" if i % 10 >= 7 else "train"
        folder = root / split / ds.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    original = root / "train" / ds.classes[0] / "01.png"
    copy = root / "val" / ds.classes[0] / "zz_copy.png"
    copy.write_bytes(original.read_bytes())
    return root, str(copy), str(original)


def test_the_section_offers_the_measurement_and_a_disabled_drop_toggle():
    at = data_page()
    assert any(h.value == "Diversity in feature space" for h in at.subheader)
    assert at.button(key=K.FEATURES_MEASURE).label.startswith("Measure it: one forward pass over the 1,797 images")
    toggle = at.toggle(key=K.cfg("drop_duplicates"))
    assert toggle.disabled and not toggle.value  # nothing to drop before it is measured


@pytest.mark.slow
def test_measuring_draws_the_figures_lists_the_copy_and_drops_it(tmp_path):
    folder, copy, original = folder_with_a_copy(tmp_path / "shapes_folder")
    at = data_page()
    at.radio(key=K.SOURCE).set_value("Folder on this machine").run()
    at.text_input(key=K.FOLDER).input(str(folder)).run()
    at.button(key=K.USE_FOLDER).click().run()
    at.session_state[K.cfg("image_size")] = 64
    at.run()
    at.button(key=K.FEATURES_MEASURE).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert K.FEATURES_MEASURE not in [b.key for b in at.button]  # measured: the page redrew without it
    m = {x.label: x.value for x in at.metric}
    config = current_config(at.session_state)
    ds = data.load_for(config)
    report, embedded = features.figures(config, ds)  # from the disk now: the page's figures
    assert report.computed == 0 and m["Vendi score (training split)"] == f"{report.vendi:.1f}"
    assert m["Near-duplicates across splits"] == f"{report.across_count:,}" and report.across_count >= 1
    index = {f: i for i, f in enumerate(ds._files)}
    assert any((p.index_a, p.index_b) == (index[copy], index[original]) for p in report.across)
    assert any("zz_copy.png" in md.value and "≈" in md.value for md in at.markdown)  # the pair, in words
    vendi, counts, the_map = charts(at)[1], charts(at)[0], charts(at)[2]
    assert vendi["data"][1]["y"] == pytest.approx([c.vendi for c in report.classes])
    assert sorted(i for trace in the_map["data"] for i in trace["customdata"]) == sorted(embedded.train()[0])
    assert any("Select points on the map" in c.value for c in at.caption)
    train_before, val_before = sum(counts["data"][0]["y"]), sum(counts["data"][1]["y"])

    toggle = at.toggle(key=K.cfg("drop_duplicates"))
    assert not toggle.disabled
    toggle.set_value(True).run()
    assert not at.exception
    counts = charts(at)[0]
    assert sum(counts["data"][0]["y"]) == train_before - report.drop_train
    assert sum(counts["data"][1]["y"]) == val_before - report.drop_held
    assert current_config(at.session_state).drop_duplicates is True


def test_a_selection_on_the_map_names_its_images():
    event = {"selection": {"points": [{"customdata": 4, "x": 0.1}, {"customdata": [9]}]}}
    assert ui_charts.selected_items(event) == [4, 9]
    fig = ui_charts.feature_map([[0, 0], [1, 1], [2, 2]], [0, 1, 0], ("a", "b"), [10, 11, 12], "pca")
    traces = {t.name: list(t.customdata) for t in fig.data}
    assert traces == {"a": [10, 12], "b": [11]}
    assert np.array(fig.data[0].x).tolist() == [0, 2]
