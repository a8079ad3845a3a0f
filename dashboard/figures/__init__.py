"""Plotly figure builders of the dashboard; pages only place them (the planner draws nothing).

- `graph`: the layer graph, its blocks wrapped into rows, coloured by pipeline rank;
- `plan`: a priced plan's placement, memory per device, schedule and where time goes;
- `run`: the Monitor's charts of a run: loss, throughput, each rank's step, memory, CPU.
- `sizing`: the Size page's Pareto front, cost against time to train by device kind.

May import: plotly and networkx, the planner (any part) and the rest of the dashboard
(`format`, and `run_compare` for the run it draws). Never streamlit itself (a builder returns a
``go.Figure``; the page places it), nor `views`.
"""
