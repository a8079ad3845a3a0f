"""Stagecraft's dashboard: `streamlit run app.py` (bound to 127.0.0.1 by .streamlit/config.toml)."""

import streamlit as st

from dashboard import messages, shared, sidebar, state

st.set_page_config(page_title="Stagecraft", layout="wide")
page = st.navigation(
    [
        st.Page("views/model.py", title="Model", default=True),
        st.Page("views/devices.py", title="Devices"),
        st.Page("views/size.py", title="Size"),
        st.Page("views/plan.py", title="Plan"),
        st.Page("views/export.py", title="Export / import"),
        st.Page("views/runs.py", title="Runs"),
        st.Page("views/monitor.py", title="Monitor"),
    ]
)
state.start()  # this browser session's id (in the URL) and, on its first run, its saved choices
sidebar.draw()  # a placeholder the pages redraw whenever they change the model, devices or plan
shared.redraw_sidebar()
try:
    page.run()
except Exception as exc:  # each page says what went wrong in one line; this catches what they miss
    messages.unexpected(exc, f"The {page.title} page")
