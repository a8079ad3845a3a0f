"""The sidebar: the current model, devices and plan, always as the page has just set them.

app.py draws the sidebar before the page runs, so a page that changes the model would leave
it one step behind. The sidebar is therefore a placeholder that every setter in
`dashboard.shared` redraws at once.
"""

from __future__ import annotations

import streamlit as st

_SLOT = "sidebar_slot"  # a placeholder element: lives in this session's state, never saved


def draw() -> None:
    """Make the sidebar's placeholder for this run and fill it (app.py, before the page runs)."""
    st.sidebar.caption("Stagecraft: plan and run parallel training")
    st.session_state[_SLOT] = st.sidebar.empty()
    refresh()


def refresh() -> None:
    """Redraw the sidebar from the current state (a no-op when a page runs without app.py)."""
    from dashboard.messages import md
    from dashboard.shared import cluster_brief, current_cluster_json, current_model, recorded_plan

    slot = st.session_state.get(_SLOT)
    if slot is None:
        return
    source, overrides = current_model()
    plan = recorded_plan()
    with slot.container():
        st.markdown(f"**Model**  \n{md(f'{source} {overrides}'.strip())}")
        st.markdown(f"**Devices**  \n{md(cluster_brief(current_cluster_json()))}")
        if plan is None:
            st.markdown("**Plan**  \nthe fastest that fits (see the Plan page)")
        else:
            st.markdown(f"**Plan**  \n{md(plan.name)}{' (edited)' if plan.edited else ''}")
