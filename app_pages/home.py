"""Home: what the lab is for, the device, and what is running."""
import streamlit as st

from ftlab import explore
from ftlab.engine import pick_device
from ui import parts, resources

st.title("ftlab — the Fine-Tuning Lab")
st.markdown(
    "Fine-tune a pretrained image classifier and see what each choice does. "
    "Pick a data set and look at how balanced its classes are; choose a backbone and which of its "
    "blocks to freeze; train while the curves grow; then compare runs and look at the mistakes."
)
for target, label, what in [
    ("app_pages/data.py", "1 · Data", "built-in digits or shapes, a download, your own .zip or folder; class balance"),
    ("app_pages/model.py", "2 · Model & freezing", "backbone, weights, which blocks train"),
    ("app_pages/train.py", "3 · Train", "options, start and stop, live curves and confusion matrix"),
    ("app_pages/runs.py", "4 · Runs", "every kept run: compare, download, delete"),
    ("app_pages/inspect_run.py", "5 · Inspect & predict", "mistakes, hardest images, classify an image"),
]:
    st.page_link(target, label=f"**{label}** — {what}")

left, right = st.columns(2)
left.metric("Training device", explore.device_text(pick_device("auto")), border=True)
right.metric("Runs kept", len(resources.store().list()), border=True)

running = resources.registry().running()
st.subheader("Running now")
if not running:
    st.caption("Nothing is training. Start a run on the Train page.")
for job in running:
    snap = job.snapshot()
    c = job.config
    progress = explore.progress(snap, c.epochs, ended=False)[1]
    st.markdown(f"{parts.run_title(job.run_id, c)} — {progress}")
