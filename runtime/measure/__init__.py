"""Measurement: what the planner's predictions are calibrated with and compared against.

- `profiling`: ``python -m runtime profile``: blocks, optimizer and links timed on this machine,
  written as a `planner.profile` document;
- `tiny_run`: the plans of a model too small to compute that the profile trains with the
  runtime's engines, to measure the runtime's own host work per action;
- `compare`: predicted vs measured, a run next to what its plan said;
- `reference`: single-process training of a plan's model, the baseline of the parity tests.

May import: torch, the planner (capture to trace, cost to predict, search.build, the profile
document), and the rest of runtime (`rank`, `parallel`, `supervise.store`). Never `dashboard`
or `views`, nor plotly or streamlit. docs/calibration.md says how.
"""
