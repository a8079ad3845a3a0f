"""The cost model: what a plan costs, step time, timeline, traffic and memory, by simulation.

- `price`: ``price(graph, cluster, plan, profile=None)``, the one entry (`Pricer` for many
  plans of one graph), and the choice of the plan's step;
- `plan_pricing`: what the parts share while they price one plan;
- `stages`: each stage's sizes and the bytes crossing each stage boundary;
- `step`: what a step must tell the pricer (its tasks, its stages' work, what ranks hold);
- `pipeline`: torch's pipeline schedules and their sends (data parallel is one stage);
- `gan`: a GAN's own step, as the runtime's GAN engine runs it;
- `sharded`: sharded data parallel's gathers and reduce-scatters, pass by pass;
- `tensor_parallel`: a tensor-parallel rank's share of each block, and its group's collectives;
- `reductions`: tied-weight sums, data-parallel all-reduces, optimizer steps;
- `collectives`: ring collectives' time and their bytes per link;
- `timing`: the formulas for one block, one transfer, one all-reduce, one optimizer step;
- `simulate`: a discrete-event simulation of one training step, rank by rank;
- `memory`: memory per device, term by term.

Pure Python: may import the standard library, networkx, the planner's documents and
`planner.capture.graph` (the layer graph it prices). Never torch, transformers, plotly or
streamlit, nor `planner.search` (which calls it) or the rest of `planner.capture`.
docs/cost_model.md says why a simulation.
"""
