"""The one training loop and the one evaluation routine, shared by every stage.

Base training, SNL, distillation and the fairness mitigations differ only in the loss
callable they pass to :func:`train_one_epoch` (and an optional per-step hook); nothing else
grows a loop of its own (torchvision's ``references/classification/train.py`` layout).

Data are :class:`~tune_linfair.data.base.Split` tensors held on the training device;
batches are drawn by ``randperm`` and augmented on tensors (airbench's approach).
On CUDA, training runs under bf16 autocast with channels_last memory format; evaluation
always runs in full float32 (:func:`tune_linfair.numerics.float32`), since its logits are
measurements.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tune_linfair.data.base import Split
from tune_linfair.numerics import float32


@dataclass(frozen=True)
class Batch:
    """A mini-batch: inputs, targets, groups, and the samples' indices in their split."""

    x: torch.Tensor
    y: torch.Tensor
    g: torch.Tensor
    index: torch.Tensor


LossFn = Callable[[nn.Module, Batch], torch.Tensor]
"""A loss: ``loss_fn(model, batch) -> scalar tensor``. Stateful losses (distillation with a
cached teacher, Lagrangian mitigation) are callables that keep their own epoch statistics."""

StepHook = Callable[[int], bool]
"""Called after every optimizer step with the global step count; returning True stops."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for batch order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless model)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Mini-batches of ``split`` in order, or shuffled by ``randperm`` with ``generator``."""
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(split.x.device)
    else:
        order = torch.arange(n, device=split.x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield Batch(split.x[idx], split.y[idx], split.g[idx], idx)


def _autocast(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on CUDA always; on CPU only when asked (``cpu_bf16``: worth it on CPUs
    with native bf16, e.g. AVX-512 BF16 or AMX; parameters stay float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    split: Split,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    step_hook: StepHook | None = None,
    step_offset: int = 0,
    grad_clip: float | None = None,
    cpu_bf16: bool = False,
) -> dict[str, float]:
    """One pass over ``split``: for each shuffled batch, ``loss_fn`` -> backward -> step.

    The loss runs under bf16 autocast on CUDA, and on CPU with ``cpu_bf16``.

    Returns ``{"loss": sample-weighted mean loss, "steps": steps taken, "stopped": 0/1}``.
    ``step_hook(global_step)`` runs after each step and may stop the epoch early.
    Raises :class:`NonFiniteLossError` when the loss turns NaN or infinite.
    """
    device = model_device(model)
    model.train()
    total, seen, steps, stopped = 0.0, 0, 0, False
    for batch in iterate_batches(split, batch_size, shuffle=True, generator=generator):
        x = batch.x.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, generator if x.device.type == "cpu" else None)
        x = _prepare(x, device)  # after augmenting: random_crop_flip returns NCHW-contiguous
        batch = Batch(x, batch.y.to(device), batch.g.to(device), batch.index)
        with _autocast(device, cpu_bf16):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at step {step_offset + steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        steps += 1
        total += float(loss.detach()) * len(batch.y)
        seen += len(batch.y)
        if step_hook is not None and step_hook(step_offset + steps):
            stopped = True
            break
    return {"loss": total / max(seen, 1), "steps": float(steps), "stopped": float(stopped)}


@dataclass(frozen=True)
class EvalResult:
    """Per-sample outputs of :func:`evaluate`, on the CPU: logits (N, C) float32, targets,
    groups. Metrics (per-group accuracy, margins, ...) are computed from these."""

    logits: torch.Tensor
    y: torch.Tensor
    g: torch.Tensor

    @property
    def pred(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def correct(self) -> torch.Tensor:
        return self.pred == self.y

    @property
    def loss(self) -> torch.Tensor:
        """Per-sample cross-entropy."""
        return F.cross_entropy(self.logits, self.y, reduction="none")

    def accuracy(self) -> float:
        """Overall accuracy in percent."""
        return 100.0 * float(self.correct.float().mean()) if len(self.y) else math.nan

    def group_accuracy(self, num_groups: int) -> list[float]:
        """Accuracy in percent of each group id (NaN for an empty group)."""
        out = []
        for a in range(num_groups):
            sel = self.g == a
            out.append(100.0 * float(self.correct[sel].float().mean()) if sel.any() else math.nan)
        return out


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 1024) -> EvalResult:
    """Logits of ``model`` (eval mode) on every sample of ``split``, in order, computed in
    float32 with autocast off even inside a caller's autocast context (they feed accuracies,
    losses, margins and the cached teacher logits)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    chunks = []
    for batch in iterate_batches(split, batch_size):
        with float32():
            chunks.append(model(_prepare(batch.x, device)).float().cpu())
    model.train(was_training)
    logits = torch.cat(chunks) if chunks else torch.empty(0, 0)
    return EvalResult(logits, split.y.cpu(), split.g.cpu())


Selector = Callable[[EvalResult], float]
"""Model-selection score on the validation split; higher is better."""


def val_accuracy(result: EvalResult) -> float:
    """The default selector: overall validation accuracy."""
    return result.accuracy()


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch log, the best epoch and its validation score."""

    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    steps: int
    stopped_early: bool


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    step_hook: StepHook | None = None,
    select: Selector | None = val_accuracy,
    on_epoch_end: Callable[[int, dict[str, float], nn.Module], None] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """Train for ``epochs`` and keep the weights of the best validation epoch.

    Each epoch: :func:`train_one_epoch`, ``scheduler.step()``, evaluation on ``val`` and
    ``select`` (higher is better; ``None`` keeps the last epoch). The model ends with the
    best epoch's state. ``on_epoch_end(epoch, log, model)`` sees every epoch's log (loss,
    val accuracy, score) after any loss-specific update (e.g. Lagrange multipliers).
    Model selection uses validation data only, never the test split.
    """
    history: list[dict[str, float]] = []
    best_state, best_score, best_epoch, steps = None, -math.inf, -1, 0
    stopped = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=desc, leave=False)
    for epoch in range(epochs):
        log = train_one_epoch(
            model,
            train,
            loss_fn,
            optimizer,
            batch_size=batch_size,
            generator=generator,
            augment=augment,
            step_hook=step_hook,
            step_offset=steps,
        )
        steps += int(log["steps"])
        if scheduler is not None:
            scheduler.step()
        end_epoch = getattr(loss_fn, "end_epoch", None)
        if callable(end_epoch):
            log.update(end_epoch(model) or {})
        result = evaluate(model, val)
        log["epoch"] = float(epoch)
        log["val_accuracy"] = result.accuracy()
        for a in torch.unique(result.g).tolist():
            log[f"val_acc_g{a}"] = 100.0 * float(result.correct[result.g == a].float().mean())
        score = select(result) if select is not None else float(epoch)
        log["score"] = score
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        history.append(log)
        if on_epoch_end is not None:
            on_epoch_end(epoch, log, model)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{log['loss']:.3f}", val=f"{log['val_accuracy']:.1f}")
        if log["stopped"]:
            stopped = True
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_score, steps, stopped)
