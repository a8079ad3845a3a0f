"""Capture: a model, named by its source, built and traced into a costed layer graph.

- `source`: how a model is named (zoo, ``hf:``, ``py:``) and built, on the meta device by default;
- `overrides`: ``key=value`` size overrides, parsed without evaluating anything;
- `trace`: ``torch.export`` on meta, each op costed by torch's own counters;
- `hooks`: the fallback capture, from module forward hooks, for what export cannot trace;
- `tensors`: what both captures count the same way: bytes, storages, tensors saved for backward;
- `params`: which node owns each parameter, and which parameters are tied (both captures);
- `modules`: the module tree the graph records, and the module a failing forward was in;
- `attention`: scaled-dot-product attention measured as the fused kernel runs it;
- `graph`: the layer graph itself (a ``networkx.DiGraph``), its sums, block order and digest;
- `coarsen`: the fine graph grouped into blocks along module boundaries, every total kept;
- `tp_layouts`: each block's tensor-parallel layout (`planner.tensor_parallel`), found in the model;
- `tp_roles`: what tensor parallelism divides in each traced op (its role), and per block.

`trace` imports `hooks` (its fallback); `hooks` never imports `trace`.
May import: torch and transformers, inside the functions that build or trace (so `graph`,
`coarsen`, `overrides` and `source` import without torch); the planner's documents; `planner.zoo`
inside functions. Never `planner.cost` or `planner.search` (they read the graph, not the other
way round), nor runtime, dashboard, views, plotly or streamlit.
"""
