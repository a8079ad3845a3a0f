"""Stagecraft's dashboard: `streamlit run app.py` (bound to 127.0.0.1 by .streamlit/config.toml)."""

import json

import streamlit as st

from dashboard.shared import current_cluster_json, current_model

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
source, overrides = current_model()
cluster = json.loads(current_cluster_json())
st.sidebar.caption("Stagecraft: plan and run parallel training")
st.sidebar.markdown(f"**Model** {source} {overrides}".strip())
st.sidebar.markdown(f"**Devices** {cluster.get('name') or 'custom'}: {len(cluster['devices'])}")
page.run()
