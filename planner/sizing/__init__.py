"""Sizing: the cheapest cluster for a training job, in time and money ("what do I need?").

- `catalog`: the price catalogue (device kinds, their hourly prices with source and date,
  the node shapes they come in, a cap on nodes), strictly validated; `default_catalog.json`.
- `size`: searches cluster shapes from a catalogue, plans each with `planner.search`, and
  keeps the Pareto front of time to train against cost;
- `report`: the job's token count and limit read from text, the point chosen, why the other
  shapes are off the front, and the figures in words (the command line's and the Size page's).

Pure Python like `planner.search`: may import the documents, `planner.cost`, `planner.search`
and `planner.capture.graph`; never torch, plotly or streamlit.
"""
