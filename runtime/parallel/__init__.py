"""The parallelisms: what turns one rank's full model into its part of the plan.

- `parallelize`: the one function that applies a plan's parallelism, in a documented order;
- `mesh`: the rank grid, a (dp, pp, tp) ``DeviceMesh`` laid out from the plan's rank coordinates;
- `data_parallel`: ``DistributedDataParallel`` over the mesh's dp group;
- `tensor_parallel`: ``parallelize_module`` per block on the mesh's tp group (Megatron's split);
- `conv1d_parallel`: the same split of Hugging Face's ``Conv1D`` layers (GPT-2's fused q, k, v);
- `traced_split`: what a traced pipeline stage needs mended before its blocks are split;
- `sharded`: FSDP2's ``fully_shard`` per block and on the root, for a sharded ``dp_mode``;
- `recompute`: ``checkpoint_wrapper`` around every block the plan recomputes;
- `pipeline_parallel`: ``torch.distributed.pipelining`` with the plan's cuts, schedule and m;
- `grad_sync`: the gradient collectives a pipeline needs besides its sends (dp, tied weights);
- `gan`: the GAN's step, in one process, data parallel and model parallel (``mp``);
- `checkpoint`: ``torch.distributed.checkpoint`` keyed by FQN, resumable under another plan.

May import: torch, the planner's documents, and `runtime.rank` (the model, task, step and clock
an engine drives). Never `dashboard` or `views`, nor plotly or streamlit.
"""
