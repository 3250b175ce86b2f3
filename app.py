"""ftlab, the Fine-Tuning Lab: `streamlit run app.py`.

The entry point: session defaults, navigation over the pages, and a sidebar that says what
the session has chosen and what is running. Each page only renders; the work is in `ftlab`.
"""
import streamlit as st

from ftlab import paths
from ftlab.paths import StoreError
from ui import keys, parts, resources, session

st.set_page_config(page_title="ftlab", page_icon="🔬", layout="wide")
session.init_state(st.session_state)

# The folder is app_pages/, not pages/: a pages/ folder beside the entry script puts Streamlit
# in its legacy multipage mode until the first st.navigation call of the process, so the
# first visit to /train after a restart would run that page alone, without this script.
PAGES = [
    st.Page("app_pages/home.py", title="Home", icon="🔬", default=True),
    st.Page("app_pages/data.py", title="Data", icon="🗂️", url_path="data"),
    st.Page("app_pages/model.py", title="Model & freezing", icon="🧊", url_path="model"),
    st.Page("app_pages/train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("app_pages/sweep.py", title="Sweep strategies", icon="🧪", url_path="sweep"),
    st.Page("app_pages/runs.py", title="Runs", icon="📋", url_path="runs"),
    st.Page("app_pages/inspect_run.py", title="Inspect & predict", icon="🔍", url_path="inspect"),
]
page = st.navigation(PAGES)



def sidebar(slot) -> None:
    with slot.container():
        st.caption(parts.config_summary(session.current_config(st.session_state)))
        running = resources.registry().running()
        if running:
            st.caption("Running: " + ", ".join(f"`{j.run_id}`" for j in running))


summary = st.sidebar.empty()
sidebar(summary)  # as the session stands, for a page that stops early (st.stop ends the script run)
if flash := st.session_state.pop(keys.STORE_FLASH, None):
    getattr(st, flash[0])(flash[1])
try:
    if problems := paths.setting_problems():  # the environment is read at start: fixing it means a restart
        parts.problems("ftlab cannot use these environment settings; change them and restart the app:", problems)
        st.stop()
    page.run()
except StoreError as err:  # FTLAB_HOME or the run store under it, on any page: a sentence, never a traceback
    parts.store_error(err)
sidebar(summary)  # again: the page may have chosen a data set or adopted a run
