"""What a plan trains: the model's objective, its data set, and which samples each step sees.

Every plan of one model, whatever its layout, sees exactly the same global batches as
single-process training: the samples of step ``s`` depend only on (seed, s), and replica
``d`` takes the contiguous slice of them that its batch share covers.

- ``classify`` (mlp, cnn): cross-entropy of the logits against the digit labels.
- ``next_token`` (gpt, Hugging Face causal LMs): cross-entropy of every position's logits
  against the next byte, averaged over tokens.
- ``gan`` (a model whose blocks are a generator and a discriminator: `Plan.adversarial`):
  real digits rescaled to [-1, 1], and latent vectors z drawn from (seed, step); the
  adversarial losses are in ``runtime.parallel.gan``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

from planner.errors import PlanError
from planner.plan import Plan
from runtime.rank.data import ArrayDataset, ByteCorpus, load_dataset


class Objective(StrEnum):
    """What a model is trained to do (each has its loss and its data)."""

    CLASSIFY = "classify"
    NEXT_TOKEN = "next_token"
    GAN = "gan"


def stream_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from (seed, parts): the same in every process, unlike ``hash()``."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@functools.lru_cache(maxsize=2)  # a step's batch spans at most two epochs
def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the ``n`` samples in epoch ``epoch``: a permutation seeded by (seed,
    epoch). Kept, since every step of the epoch reads it: drawing the GPT's 32,768 windows'
    order anew took a step's batch 0.3 ms to load, 0.05 ms with it kept. Read-only."""
    gen = torch.Generator().manual_seed(stream_seed(seed, "epoch", epoch))
    return torch.randperm(n, generator=gen)


def classify_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target)  # logits: (B, classes)


def next_token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    B, T, V = logits.shape  # batch, sequence length, vocabulary
    return F.cross_entropy(logits.float().reshape(B * T, V), target.reshape(B * T))


@dataclass(frozen=True)
class Task:
    kind: Objective
    data: ArrayDataset | ByteCorpus
    global_batch: int
    seed: int
    latent_dim: int = 0
    """GAN only: width of z."""
    sample_shape: tuple[int, ...] | None = None
    """Shape of one input sample when the model wants other than the data set's (the CNN's
    1 x 8 x 8 image of a 64-pixel row)."""
    input_dtype: torch.dtype = torch.float32
    """The dtype of floating inputs (and a GAN's real samples): the weights' (pure bf16)."""

    @property
    def tokens_per_sample(self) -> int:
        """Tokens a sample trains on (1 for images): samples/s x this = tokens/s."""
        return self.data.seq_len if isinstance(self.data, ByteCorpus) else 1

    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.kind == Objective.CLASSIFY:
            return classify_loss(output, target)
        if self.kind == Objective.NEXT_TOKEN:
            return next_token_loss(output, target)
        raise PlanError("the GAN has two losses; see runtime.parallel.gan")

    def sample_indices(self, step: int) -> torch.Tensor:
        """The global batch of ``step`` (0-based): epochs of seeded permutations, in order."""
        n = len(self.data)
        start = step * self.global_batch
        positions = torch.arange(start, start + self.global_batch)
        out = torch.empty(self.global_batch, dtype=torch.long)
        for epoch in (positions // n).unique().tolist():
            perm = epoch_order(self.seed, epoch, n)
            mask = positions // n == epoch
            out[mask] = perm[positions[mask] % n]
        return out

    def batch(self, step: int, start: int = 0, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of samples ``[start, start + size)`` of step ``step``'s batch.

        For the GAN, inputs are latent vectors z and targets the real images.
        """
        size = self.global_batch - start if size is None else size
        if start < 0 or size < 1 or start + size > self.global_batch:
            raise ValueError(
                f"slice [{start}, {start + size}) is outside the global batch {self.global_batch}"
            )
        indices = self.sample_indices(step)[start : start + size]
        inputs, targets = self.data.batch(indices)
        if self.sample_shape is not None:
            inputs = inputs.reshape(size, *self.sample_shape)
        if inputs.is_floating_point():
            inputs = inputs.to(self.input_dtype)
        if self.kind != Objective.GAN:
            return inputs, targets
        gen = torch.Generator().manual_seed(stream_seed(self.seed, "latent", step))
        z = torch.randn(self.global_batch, self.latent_dim, generator=gen)[start : start + size]
        # digits in [0, 1] -> [-1, 1], the generator's tanh range
        return z.to(self.input_dtype), inputs * 2 - 1


TRAINED_ZOO_MODELS = ("mlp", "cnn", "gan", "gpt")
"""The zoo's models that the runtime has a data set for (runtime.rank.data)."""


def objective_of(source: str, *, adversarial: bool) -> Objective:
    """What a model source is trained to do; a `PlanError` for one the runtime cannot train.

    ``adversarial``: whether the model's blocks are a GAN's two networks (`Plan.adversarial`,
    planner.networks, the one place a GAN is recognised).
    """
    if source not in TRAINED_ZOO_MODELS and not source.startswith("hf:"):
        raise PlanError(
            f"model.source {source!r}: the runtime trains zoo models and Hugging Face causal LMs; "
            "a py: factory has no objective or data set it could train on"
        )
    if adversarial:
        return Objective.GAN
    if source == "gpt" or source.startswith("hf:"):
        return Objective.NEXT_TOKEN
    return Objective.CLASSIFY  # mlp, cnn


def task_for(
    source: str, config: dict[str, Any], dataset: str, global_batch: int, seed: int, *, adversarial: bool
) -> Task:
    """The task of a model source with its resolved config; a `PlanError` if it cannot train.

    ``adversarial`` as in `objective_of`.
    """
    kind = objective_of(source, adversarial=adversarial)
    if kind == Objective.NEXT_TOKEN:
        vocab = config.get("vocab_size", 0)
        if vocab < 256:
            raise PlanError(f"model: vocab_size {vocab} is too small for the byte corpus (needs >= 256)")
        if not dataset.startswith("bytes:"):
            raise PlanError(
                f"training.dataset: {source} trains on a byte corpus (bytes:stdlib), not {dataset!r}"
            )
        data = load_dataset(dataset, seq_len=int(config["seq_len"]))
    else:
        if dataset != "digits":
            raise PlanError(f"training.dataset: {source} trains on digits, not {dataset!r}")
        data = load_dataset(dataset)
    if len(data) < 1:
        raise PlanError(f"training.dataset {dataset!r} has no samples")
    side = config.get("image_size")
    shape = (1, side, side) if source == "cnn" else None
    return Task(
        kind, data, global_batch, seed, latent_dim=int(config.get("latent_dim", 0)), sample_shape=shape
    )


def plan_task(plan: Plan, config: dict[str, Any]) -> Task:
    """The task a plan trains, given its model's resolved config."""
    t = plan.training
    task = task_for(
        plan.model.source, config, t.dataset, t.global_batch, t.seed, adversarial=plan.adversarial
    )
    return dataclasses.replace(task, input_dtype=getattr(torch, t.precision.recipe.weights))
