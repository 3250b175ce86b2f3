"""Model & freezing: the backbone, its weights and head, and which blocks train."""
import pandas as pd
import streamlit as st

from ftlab import backbones, data
from ui import charts, keys as K, resources, session as S

state = st.session_state

st.title("Model & freezing")
names = backbones.list_backbones()
backbone = st.selectbox("Backbone", names, key=K.cfg("backbone"), persist_state=K.PERSIST,
                        format_func=lambda n: f"{n} — {backbones.get_spec(n).description}")
spec = backbones.get_spec(backbone)
blocks = backbones.freezable_blocks(backbone)
S.fit_to_backbone(state, blocks)  # before the preset widgets are drawn: N and a custom choice fit this backbone
config = S.current_config(state)
try:
    num_classes = len(resources.dataset(config).classes)
except data.DataError:
    num_classes = 10
    st.caption("The chosen data set cannot be read right now; counts assume a 10-class head.")

table = resources.block_table(config, num_classes)
offline = backbones.weights_available_offline(backbone)

m = st.columns(3)
m[0].metric("Parameters", f"{table.total:,}", help=f"with a new head for {num_classes} classes")
size = f"{spec.fixed_size} px (fixed)" if spec.fixed_size else f"{spec.default_size} px"
m[1].metric("Default image size", size)
m[2].metric("ImageNet weights", backbones.weights_status(backbone))

kinds = backbones.Weights.choices(backbone)
if state[K.WEIGHTS] not in kinds:
    state[K.WEIGHTS] = "random"
weights = st.radio("Weights", kinds, key=K.WEIGHTS, horizontal=True, persist_state=K.PERSIST,
                   format_func=backbones.Weights.choice_label)
if weights == "file":
    st.text_input("Weights file", key=K.WEIGHTS_FILE, persist_state=K.PERSIST, placeholder="/path/to/best.pt",
                  help="An ftlab checkpoint or a state dict of the same backbone; the head is replaced when the "
                       "classes differ.")
elif weights == "imagenet" and not offline:
    st.warning(f"{backbone}'s ImageNet weights ({spec.weights_file}) are not on this machine: the run will try "
               "torchvision's download. Offline, choose random weights or efficientnet_lite0, whose weights "
               "come with ftlab.")

h = st.columns(2)
h[0].number_input("Hidden units in the new head", 0, 8192, step=64, key=K.cfg("hidden"), persist_state=K.PERSIST,
                  help="0: a single linear layer")
h[1].slider("Dropout in the new head", 0.0, 0.9, step=0.05, key=K.cfg("dropout"), persist_state=K.PERSIST)

st.subheader("Which blocks train")
p = st.columns(4, vertical_alignment="bottom")
p[1].number_input("N", 1, len(blocks) - 1, key=K.TOP_N, persist_state=K.PERSIST)
p[3].number_input("k (epochs)", 1, 100, key=K.cfg("gradual_every"), persist_state=K.PERSIST)
for col, (label, name, preset) in zip(p, [("Linear probe", "linear_probe", "linear-probe"), ("Top-N", "top_n", "top-N"),
                                          ("Full", "full", "full"), ("Gradual", "gradual", "gradual")]):
    col.button(label, key=K.PRESET_BUTTON.format(name), on_click=S.set_preset, args=(state, preset), width="stretch")
st.caption(S.strategy_of(state).describe(state[K.cfg("gradual_every")]))

o = st.columns(2)
o[0].slider("Discriminative rate factor", 0.01, 1.0, step=0.01, key=K.cfg("lr_decay"), persist_state=K.PERSIST,
            help="Each block learns at this factor times the rate of the block above it (1: one rate for all).")
o[1].checkbox("Frozen blocks keep their BatchNorm statistics", key=K.cfg("bn_frozen"), persist_state=K.PERSIST,
              help="Frozen blocks run in eval mode while training, so they compute what they were pretrained to.")

table = resources.block_table(S.current_config(state), num_classes)
shown = pd.DataFrame(table.columns())
edited = st.data_editor(
    shown, key=K.BLOCK_TABLE.format(state[K.EDITOR_VERSION]), hide_index=True,
    disabled=[c for c in shown.columns if c != "train"],
    column_config={"train": st.column_config.CheckboxColumn("train", help="untick to freeze the block"),
                   "parameters": st.column_config.NumberColumn(format="localized"),
                   "learning rate ×": st.column_config.NumberColumn(format="%.3g")})
wanted = {b for b, t in zip(edited["block"], edited["train"]) if not t}
if "head" in wanted:  # untrainable head: nothing would learn; show the table afresh, with a word why
    state[K.HEAD_WARNING] = True
    state[K.EDITOR_VERSION] += 1
    st.rerun()
if state.pop(K.HEAD_WARNING, False):
    st.warning("The new head always trains: it starts from random weights.")
if wanted != table.frozen:
    S.choose_frozen(state, wanted, blocks)
    table = resources.block_table(S.current_config(state), num_classes)
if table.schedule:
    st.caption(table.schedule)

st.metric("Trainable parameters", f"{table.trainable:,}", f"{table.percent:.1f}% of {table.total:,}",
          delta_color="off", delta_arrow="off")
columns = table.columns()
st.plotly_chart(charts.block_params(columns["block"], columns["parameters"], columns["train"]),
                key="model.params_chart")
