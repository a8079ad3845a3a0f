"""What the dashboard's pages share: the current model, devices and plan, cached pure calls.

- `shared`: the current model, devices and plan, one source of truth each, and cached traces
  and searches; `state`, `session_store`: a browser session's choices kept on the server;
- `sidebar`: the current model, devices and plan, as the page has just set them;
- `naming`: how a plan is named; `format`: how every number is written;
  `messages`: one line for what went wrong, never a traceback;
- `cluster_view`: the Devices page's tables; `sizing_view`: what the Size page keeps of a
  sizing; `plan_edit`: valid hand edits of a plan;
  `uploads`: an uploaded file read as data, within `planner.limits`;
- `run_actions`, `run_summary`, `run_compare`, `run_logs`: launch, stop and resume runs, and
  what the Runs and Monitor pages say of them;
- `figures`: the plotly figures (the planner draws nothing).

May import: streamlit, plotly, pandas and networkx; the planner (any part) and the runtime
(`runtime.supervise`, `runtime.measure`). Never `views` (the pages import the dashboard, not
the other way round). The pages themselves are in `views/`, one thin file each, routed by app.py.
"""
