"""The sidebar: the current model, devices and plan, always as the page has just set them.

app.py draws the sidebar before the page runs, so a page that changes the model would leave
it one step behind. The sidebar is therefore a placeholder that every setter in
`dashboard.shared` redraws at once (`dashboard.shared.redraw_sidebar`), with what it shows
passed in: this module knows how to draw, not where the current state lives.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from dashboard.messages import md

_SLOT = "sidebar_slot"  # a placeholder element: lives in this session's state, never saved


def draw() -> None:
    """Make the sidebar's placeholder for this run (app.py, before the page runs; app.py
    then fills it with `dashboard.shared.redraw_sidebar`)."""
    st.sidebar.caption("Stagecraft: plan and run parallel training")
    st.session_state[_SLOT] = st.sidebar.empty()


def refresh(model: tuple[str, str], devices: str, plan: Any) -> None:
    """Redraw the sidebar: the model (source, overrides), the devices in brief and the chosen
    plan (None: the search's best); a no-op when a page runs without app.py."""
    slot = st.session_state.get(_SLOT)
    if slot is None:
        return
    source, overrides = model
    with slot.container():
        st.markdown(f"**Model**  \n{md(f'{source} {overrides}'.strip())}")
        st.markdown(f"**Devices**  \n{md(devices)}")
        if plan is None:
            st.markdown("**Plan**  \nthe fastest that fits (see the Plan page)")
        else:
            st.markdown(f"**Plan**  \n{md(plan.name)}{' (edited)' if plan.edited else ''}")
