"""The Streamlit side of ftlab: session keys (`keys`), the session's choices as a run
configuration (`session`), cached resources, figure builders and small
render helpers shared by the pages. Logic lives in `ftlab`; this package only wires it to
Streamlit."""
