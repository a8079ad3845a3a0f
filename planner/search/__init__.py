"""Find the fastest plan that fits: enumerate layouts, screen them, split and price the best.

- `search`: the entry and the ranking (data, pipeline and hybrid parallel, by ``price()``);
- `layouts`: what the search may try, every layout of the model on the cluster;
- `candidate`: one layout considered: its degrees, devices and shares, then its price;
- `levers`: the memory levers (sharding, recomputation) a candidate tries, cheapest first;
- `tensor_degrees`: which tensor-parallel degrees the search tries, and why not the others;
- `screen`: a quick step time for every candidate, so only the most promising are priced;
- `pricing`: price one candidate: build its plan, choose its stages, simulate its step;
- `stage_problem`, `partition`: a candidate's blocks split into stages, exactly (branch and bound);
- `build`: a valid `Plan` from a graph, a cluster and the chosen degrees;
- `gc_threshold`: fewer passes of Python's cycle collector while plans are priced.

Pure Python: may import the standard library, networkx, pydantic, the planner's documents,
`planner.cost` and `planner.capture.graph`. Never torch, transformers, plotly or streamlit,
nor the rest of `planner.capture`. docs/partitioner.md says how.
"""
