"""Stagecraft's runtime: trains plans with torch.distributed (gloo on CPU, nccl on GPUs).

- `runtime.supervise.launch` / `python -m runtime run`: check a plan, start its ranks with torchrun;
- `runtime.rank.worker`: one rank; `runtime.parallel.parallelize` applies the plan's parallelism
  (`data_parallel`, `pipeline_parallel` + `grad_sync`, `gan`) on the `mesh`;
- `runtime.rank.task` and `runtime.rank.data`: the objective and the batches of every step;
- `runtime.rank.metrics`, `runtime.rank.clock`, `runtime.supervise.store`: what is measured, and where it goes;
- `runtime.measure.reference`: single-process training, the baseline of the parity tests.
"""
