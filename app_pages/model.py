"""Model & freezing: the backbone, its weights and head, and which blocks train."""
import pandas as pd
import streamlit as st

from ftlab import backbones, data, tasks
from ftlab.config import resolved_image_size
from ftlab.edits import ACTIVATIONS, editable_blocks
from ftlab.freeze import backbone_blocks
from ui import charts, keys as K, resources, session as S

state = st.session_state

st.title("Model & freezing")
names = backbones.list_backbones()
backbone = st.selectbox("Backbone", names, key=K.cfg("backbone"), persist_state=K.PERSIST,
                        format_func=lambda n: f"{n} — {backbones.get_spec(n).description}")
spec = backbones.get_spec(backbone)
S.fit_edits(state, backbone)  # before the edit widgets are drawn: a cut and adapters at this backbone's blocks
config = S.current_config(state)
try:
    blocks = backbones.freezable_blocks(backbone, config.edits(), resolved_image_size(config))
    S.fit_to_backbone(state, blocks)  # before the preset widgets are drawn: N and a custom choice fit this backbone
    config = S.current_config(state)
    try:  # a head per trained task (the Train page's task choice), each for that task's classes
        ds = resources.dataset(config)
        S.fit_tasks(state, ds.task_names())
        num_classes, heads_note = tasks.heads(S.current_config(state), ds)
    except data.DataError:
        num_classes, heads_note = 10, ""
        st.caption("The chosen data set cannot be read right now; counts assume a 10-class head.")
    table = resources.block_table(config, num_classes)
except ValueError as err:  # edited shapes at an image size the blocks cannot take
    st.error(f"The edited model cannot be built: {err}. Choose another image size on the Train page, or undo "
             "the model edits.")
    st.button("Undo the model edits", key=K.UNDO_EDITS, on_click=S.clear_edits, args=(state,))
    st.stop()
offline = backbones.weights_available_offline(backbone)

m = st.columns(3)
m[0].metric("Parameters", f"{table.total:,}", help=f"with {tasks.heads_text(num_classes)}")
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
    st.warning(backbones.download_note(backbone))

st.subheader("The model's parts")
h = st.columns(4, vertical_alignment="bottom")
h[0].text_input("Head: hidden widths", key=K.HEAD_TEXT, persist_state=K.PERSIST, placeholder="none: one linear layer",
                on_change=S.take_head_text, args=(state,),
                help="Widths of the new head's hidden layers, separated by commas, e.g. 512,128.")
h[1].selectbox("Activation", ACTIVATIONS, key=K.cfg("activation"), persist_state=K.PERSIST,
               help="Between the head's hidden layers.")
h[2].slider("Dropout in the new head", 0.0, 0.9, step=0.05, key=K.cfg("dropout"), persist_state=K.PERSIST)
h[3].checkbox("BatchNorm in the head", key=K.cfg("head_batchnorm"), persist_state=K.PERSIST,
              help="BatchNorm between each hidden layer and its activation.")
if state.get(K.HEAD_ERROR):
    st.error(f"Head widths not taken: {state[K.HEAD_ERROR]}")
e = st.columns(3, vertical_alignment="bottom")
e[0].selectbox("Remove the blocks after", ("", *editable_blocks(backbone)), key=K.cfg("truncate_after"),
               persist_state=K.PERSIST, format_func=lambda b: b or "(none: keep every block)",
               help="The head sits on this block's pooled output: a smaller, faster model on mid-level features.")
e[1].multiselect("Add an adapter after", editable_blocks(backbone, state[K.cfg("truncate_after")]),
                 key=K.cfg("adapter_after"), persist_state=K.PERSIST,
                 help="A small residual bottleneck, zero-initialised (the model starts as the pretrained one), "
                      "that always trains while the blocks around it may stay frozen.")
e[2].number_input("Adapter channels", 1, 8192, key=K.cfg("adapter_dim"), persist_state=K.PERSIST,
                  help="Channels of each adapter's bottleneck.")

st.subheader("Which blocks train")
p = st.columns(5, vertical_alignment="bottom")
p[1].number_input("N", 1, len(backbone_blocks(blocks)), key=K.TOP_N, persist_state=K.PERSIST)
p[3].number_input("k (epochs)", 1, 100, key=K.cfg("gradual_every"), persist_state=K.PERSIST)
for col, (label, name, preset) in zip(p, [("Linear probe", "linear_probe", "linear-probe"), ("Top-N", "top_n", "top-N"),
                                          ("Full", "full", "full"), ("Gradual", "gradual", "gradual"),
                                          ("LP-FT", "lp_ft", "lp-ft")]):
    col.button(label, key=K.PRESET_BUTTON.format(name), on_click=S.set_preset, args=(state, preset), width="stretch")
st.caption(S.strategy_of(state).describe(state[K.cfg("gradual_every")]))
q = st.columns(3)
q[0].number_input("LP-FT: probe patience (epochs)", 1, 1000, key=K.cfg("lp_patience"), persist_state=K.PERSIST,
                  help="The probe has converged when its val accuracy has not improved for this many epochs.")
q[1].number_input("LP-FT: most probe epochs", 0, 1000, key=K.cfg("lp_epochs"), persist_state=K.PERSIST,
                  help="The probe ends after this many epochs even if it still improves (0: half the epochs).")
q[2].number_input("LP-FT: fine-tuning rate factor", 0.001, 1.0, step=0.01, format="%.3g", key=K.cfg("lp_ft_factor"),
                  persist_state=K.PERSIST,
                  help="After the probe every block trains at this factor times the probe's rate (0.1: 0.003 "
                       "becomes 0.0003, full fine-tuning's default).")

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
wanted, refused = table.unticked(list(edited["block"]), list(edited["train"]))
if refused:  # a frozen head or adapter, a removed block ticked: show the table afresh, with a word why
    state[K.HEAD_WARNING] = refused
    state[K.EDITOR_VERSION] += 1
    st.rerun()
if why := state.pop(K.HEAD_WARNING, ""):
    st.warning(why)
if wanted != table.frozen:
    S.choose_frozen(state, wanted, blocks)
    table = resources.block_table(S.current_config(state), num_classes)
if table.schedule:
    st.caption(table.schedule)
if heads_note:
    st.caption(heads_note)

st.metric("Trainable parameters", f"{table.trainable:,}", f"{table.percent:.1f}% of {table.total:,}",
          delta_color="off", delta_arrow="off")
columns = table.columns()
st.plotly_chart(charts.block_params(table.labels, columns["parameters"], columns["train"], table.title),
                key="model.params_chart")
