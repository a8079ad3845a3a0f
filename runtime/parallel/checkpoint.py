"""Checkpoints: `torch.distributed.checkpoint` keyed by parameter FQN, atomic, resumable
under another plan of the same model.

Model and optimizer state go through `get_state_dict` / `set_state_dict` with flattened
optimizer state, so every entry is keyed by the full model's FQN ("blocks.3.mlp.fc.weight",
"state.blocks.3.mlp.fc.weight.exp_avg"). That is what makes a checkpoint independent of the
layout: a DP=2 checkpoint loads into PP=2 stages, each rank taking the keys it holds.
Saving raw per-stage optimizer state dicts instead mixed up the stages' states with no
error: their integer keys collide (docs/facts.md).

Layout of ``<run-dir>/checkpoints/step-000010/``: DCP's shards and ``.metadata``, one
``rank<r>.pt`` per rank (its RNG states and its loss scaler's state, the same on every
rank), and ``complete.json``, written by rank 0 after every rank has finished, last. A
folder without ``complete.json`` is never loaded; older complete checkpoints are deleted
only after a newer one is complete.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from runtime.parallel.conv1d_parallel import held_part, is_strided, whole

KEEP = 2  # complete checkpoints kept per run
_STEP_DIR = re.compile(r"^step-(\d+)$")
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first."""
    found = []
    root = checkpoints_dir(run_dir)
    for path in root.iterdir() if root.is_dir() else ():
        match = _STEP_DIR.match(path.name)
        if match and (path / "complete.json").exists() and (path / ".metadata").exists():
            found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def step_of(path: Path) -> int:
    """The step a checkpoint folder holds, from its complete marker (absent: not loadable)."""
    marker = Path(path) / "complete.json"
    if not marker.exists() or not (Path(path) / ".metadata").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no complete.json or .metadata)")
    return int(json.loads(marker.read_text())["step"])


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def _state(parts: list[tuple[nn.Module, list[torch.optim.Optimizer]]]) -> dict:
    """One flat FQN-keyed dict of every part's model and optimizer state."""
    state: dict = {}
    for module, optimizers in parts:
        model_sd, optim_sd = get_state_dict(module, optimizers, options=OPTIONS)
        state.update({f"model.{k}": v for k, v in model_sd.items()})
        state.update({f"optim.{k}": v for k, v in optim_sd.items()})
    return state


def _strided(state: dict) -> dict[str, DTensor]:
    """The values of ``state`` held as strided shards (GPT-2's fused q | k | v split by heads,
    runtime.parallel.conv1d_parallel). DCP writes a shard as one block of the whole, which a
    rank's slice of each of q, k and v is not; these go through DCP whole instead."""
    return {k: v for k, v in state.items() if is_strided(v)}


def _whole(state: dict) -> dict:
    """``state`` with its strided shards gathered whole (collective; `_strided`)."""
    return {**state, **{k: whole(v) for k, v in _strided(state).items()}}


def save(run_dir: Path, step: int, parts, *, rank: int, group=None, scaler: dict | None = None) -> Checkpoint:
    """Save the state of ``step`` (the number of optimizer steps taken); collective.
    ``scaler``: the loss scaler's state (fp16-mixed), kept with the RNG states."""
    path = checkpoints_dir(run_dir) / f"step-{step:06d}"
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # an incomplete attempt at this step (no complete.json)
    dist.barrier(group=group)
    path.mkdir(parents=True, exist_ok=True)
    dcp.save(_whole(_state(parts)), checkpoint_id=path)
    rng = {"cpu": torch.get_rng_state(), "scaler": scaler or {}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, path / f"rank{rank}.pt")
    dist.barrier(group=group)
    if rank == 0:
        marker = {"step": step, "time": time.time(), "world_size": dist.get_world_size()}
        tmp = path / "complete.json.tmp"
        tmp.write_text(json.dumps(marker))
        tmp.replace(path / "complete.json")  # atomic: the marker exists whole or not at all
        for old in complete_checkpoints(run_dir)[:-KEEP]:
            shutil.rmtree(old.path, ignore_errors=True)
    dist.barrier(group=group)
    return Checkpoint(step, path)


def load(checkpoint: Checkpoint, parts, *, rank: int) -> dict:
    """Load model and optimizer state into this rank's parts (any layout of the same model);
    returns the loss scaler's state saved with it (empty if none)."""
    shards = _state(parts)
    state = _whole(shards)
    dcp.load(state, checkpoint_id=checkpoint.path)
    for k, held in _strided(shards).items():  # this rank's slices of what was read whole
        state[k] = held_part(state[k], held)
    for module, optimizers in parts:
        model_sd, optim_sd = get_state_dict(module, optimizers, options=OPTIONS)
        set_state_dict(
            module,
            optimizers,
            model_state_dict={k: state[f"model.{k}"] for k in model_sd},
            optim_state_dict={k: state[f"optim.{k}"] for k in optim_sd},
            options=OPTIONS,
        )
    rng_file = checkpoint.path / f"rank{rank}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than saved: fresh RNG is fine
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    first = checkpoint.path / "rank0.pt"  # every rank saved the same scale
    return torch.load(first, weights_only=True).get("scaler", {}) if first.exists() else {}
