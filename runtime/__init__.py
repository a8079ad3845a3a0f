"""Stagecraft's runtime: trains plans with torch.distributed (gloo on CPU, nccl on GPUs).

- `runtime.launch` / `python -m runtime run`: check a plan, start its ranks with torchrun;
- `runtime.worker`: one rank; `runtime.parallelize` applies the plan's parallelism
  (`data_parallel`, `pipeline_parallel` + `grad_sync`, `gan`) on the `mesh`;
- `runtime.task` and `runtime.data`: the objective and the batches of every step;
- `runtime.metrics`, `runtime.clock`, `runtime.store`: what is measured, and where it goes;
- `runtime.reference`: single-process training, the baseline of the parity tests.
"""
