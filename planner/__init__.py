"""Stagecraft's planner: from a model and a cluster to a priced, validated plan.

The contracts, at the top level. The documents the planner, the runtime and the dashboard share:
- `plan`: the plan document (JSON, ``schema_version`` 4), written by the planner, trained by the runtime;
- `precision`: fp32, bf16-mixed, fp16-mixed or bf16: which dtype holds the weights, which one
  computes, and the bytes per parameter each holds;
- `sharding`: the memory levers: how data-parallel groups hold the model (replicated or
  sharded), and which blocks recompute their activations;
- `tensor_parallel`: which blocks split across a tensor group, and which of their layers by
  columns or by rows (Megatron's layout);
- `cluster`, `topology`, `devices`: the devices and their links, which link joins two devices, the
  catalog of device and link kinds with each figure's source;
- `profile`: figures measured on real devices, which replace datasheet ones;
- `schedules`: pipeline schedules as torch runs them; `networks`: the one place a GAN is recognised;
- `limits`, `strict`, `errors`: input limits, strict document reading, one-line errors.
The commands over them: `cli`, `cli_args`, `cli_size` (``size``), `model_check` and `__main__`
(``python -m planner``).

Sub-packages: `capture` (build and trace a model into a layer graph), `cost` (price a plan),
`search` (find the plans worth pricing), `sizing` (the cluster a training job needs, from a
price catalogue), `zoo` (the built-in torch models).

May import: the documents, the standard library, pydantic, networkx, one another and
`planner.capture.overrides` (the syntax of a plan's overrides); the commands, the documents and,
inside their functions, `capture`, `search` and `sizing`. torch only inside a function (`cluster` asks it
for this machine's GPUs), so the contracts import without it. The planner never imports
`runtime`, `dashboard` or `views`, nor plotly or streamlit (tests/test_layers.py,
tests/test_imports.py; docs/architecture.md).
"""
