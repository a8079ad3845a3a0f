"""One rank of a run, from the inside: its loop and what it builds, trains and reports.

- `worker`: the rank's entry under torchrun: parallelize the plan, train, checkpoint, report;
- `model`: the plan's full model on the meta device, its tied parameters, its optimizer;
- `materialise`: only the part a rank holds made real, with values from (seed, FQN) alone;
- `amp`: the plan's precision in a rank: torch.autocast for compute, a GradScaler for fp16;
- `task`: the objective (classify, next token, GAN) and which samples each step sees;
- `data`: the zoo's data sets (8x8 digits, a byte corpus), never downloaded;
- `step`: what one training step of one rank reports, whatever the parallelism;
- `clock`: compute time, inside forward, loss and backward only;
- `timeline`: what a rank waits for (a peer's data, its own communication), every step;
  and, when asked, each event of its steps (`bench/waits.py`);
- `metrics`: per-step figures gathered to rank 0 and written to the runs database;
- `tensor_memory`: the tensor allocator's peak, and the model states checked against the price;
  `host_allocator`: glibc's malloc thresholds fixed;
- `control`: a graceful stop agreed by all ranks, and death with the supervisor.

May import: torch, the planner (its documents, `planner.capture.source` to build the model), and
the rest of runtime (`parallel`, `supervise.store`, `measure.compare`). Never `dashboard` or
`views`, nor plotly or streamlit.
"""
