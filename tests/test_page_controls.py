"""Every option has a page control as well as a CLI flag: each TrainConfig field is bound to a widget
on some page (or made from other widgets, as the strategy is from the Model page's presets), and the
Train page's precision control reaches the run's config."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from streamlit.testing.v1 import AppTest

from ftlab.config import TrainConfig
from ui import keys as K
from ui.session import DERIVED

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ("app_pages/data.py", "app_pages/model.py", "app_pages/train.py")
WIDGETS = ("selectbox", "checkbox", "number_input", "slider", "text_input", "multiselect", "toggle", "radio",
           "select_slider")
# made from other widgets: the head from the Model page's text of widths (`hidden` is its old form)
COMPOSED = {"head": K.HEAD_TEXT, "hidden": K.HEAD_TEXT}


def keys_on(at: AppTest) -> set[str]:
    return {w.key for kind in WIDGETS for w in getattr(at, kind) if w.key}


def test_every_option_has_a_control_on_a_page(app_env):
    at = AppTest.from_file(APP, default_timeout=120).run()
    seen = set()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, page
        seen |= keys_on(at)
        if page == "app_pages/data.py":  # the generator's options show with the generated data set
            at.selectbox(key=K.BUILTIN).select("shapes").run()
            seen |= keys_on(at)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in DERIVED]
    missing = [name for name in fields if K.cfg(name) not in seen and COMPOSED.get(name) not in seen]
    assert not missing, f"options without a page control: {missing}"
    # the derived ones come from the Data page's source and the Model page's presets and weights
    assert {K.SOURCE, K.WEIGHTS} <= seen
    at.switch_page("app_pages/model.py").run()
    presets = [b.key for b in at.button if b.key and b.key.startswith(K.PRESET_BUTTON.format(""))]
    assert len(presets) >= 4  # linear probe, top-N, full, gradual


def test_the_precision_control_sets_the_runs_precision(app_env):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("app_pages/train.py").run()
    control = at.selectbox(key=K.cfg("precision"))
    assert control.value == "auto" and list(control.options) == ["auto", "fp32", "bf16", "fp16"]
    # bound by its key: the form's value is the session's cfg.precision, which current_config reads
    state = {**{k: at.session_state[k] for k in at.session_state}, K.cfg("precision"): "bf16"}
    from ui.session import current_config

    assert current_config(state).precision == "bf16"
    captions = " ".join(c.value for c in at.caption)
    assert "This machine:" in captions and "bf16" in captions  # what torch reports of this CPU
