"""Stagecraft's runtime: executes plans with torch.distributed (gloo on CPU, nccl on GPUs).

This package grows with the runtime issues; today it holds the zoo's data sets
(`runtime.data`), which the workers will shard by (step, rank).
"""
