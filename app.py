"""Stagecraft's dashboard: `streamlit run app.py` (bound to 127.0.0.1 by .streamlit/config.toml)."""

import streamlit as st

st.set_page_config(page_title="Stagecraft", layout="wide")
page = st.navigation(
    [
        st.Page("pages/model.py", title="Model", default=True),
        st.Page("pages/devices.py", title="Devices"),
        st.Page("pages/plan.py", title="Plan"),
        st.Page("pages/export.py", title="Export / import"),
        st.Page("pages/runs.py", title="Runs"),
        st.Page("pages/monitor.py", title="Monitor"),
    ]
)
st.sidebar.caption("Stagecraft: plan and run parallel training")
page.run()
