"""Stagecraft's runtime: trains plans with torch.distributed (gloo on CPU, nccl on GPUs).

- `cli`, `__main__`: ``python -m runtime`` (run, list, stop, resume, command, profile);
- `supervise`: a run from the outside: launch, its supervisor, the runs database, progress;
- `rank`: one rank from the inside: the worker's loop, the model, task and data, metrics;
- `parallel`: the plan's parallelism applied to the model, in one documented order;
- `measure`: profiling a model and the links, predicted vs measured, single-process reference.

Data flow: `supervise.launch` checks a plan and starts `supervise.supervisor`, which starts
the ranks with torchrun; each `rank.worker` calls `parallel.parallelize`, which builds the
model and applies the plan's parallelism; `rank.metrics` writes every step to
`supervise.store`, which the dashboard reads. `measure.profiling` writes the profile that
`planner.cost` prices with.

May import: torch (and numpy), the planner (any part), and one another's sub-packages
(without a module import circle). Never `dashboard` or `views`, nor plotly or streamlit
(tests/test_layers.py; docs/architecture.md).
"""
