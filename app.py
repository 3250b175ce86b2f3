"""ftlab, the Fine-Tuning Lab: `streamlit run app.py`."""
import streamlit as st

st.set_page_config(page_title="ftlab", page_icon="🔬", layout="wide")
st.title("ftlab — the Fine-Tuning Lab")
st.write("The engine is ready; the pages come next. Meanwhile: `python -m ftlab --help`.")
