"""A run from the outside: started, watched, stopped, resumed, recorded.

- `launch`: start, stop, resume and list runs (what ``python -m runtime`` does);
- `supervisor`: owns a run from torchrun's start to its final state, on loopback;
- `store`: the runs database, one SQLite file written while the dashboard reads it;
- `progress`: the one-line progress bar of a run in the terminal;
- `multinode`: one torchrun command per node, and a Slurm script, for a run across machines.

May import: torch, the planner's documents (plan, model_check, limits), and the rest of
runtime (`rank.control`, `rank.model`, `rank.task`, `parallel.checkpoint`, `measure.compare`).
Never `dashboard` or `views`, nor plotly or streamlit.
"""
