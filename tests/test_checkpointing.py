"""In-training checkpoints without Ray (tune_linfair.checkpointing, train.fit's ``checkpoint``).

A run that "dies" right after its checkpoint at epoch k and is resumed from that checkpoint
in fresh objects (new model, optimizer, scheduler, loss, generator, and the global RNGs
scrambled) ends with exactly the weights, multipliers and history of the uninterrupted run:
on CPU every operation is deterministic given its inputs, so restoring every input (weights,
momentum buffers, schedule, multipliers or group weights, RNG states, batch-order generator)
must reproduce the run bit for bit. The death is an exception raised by the checkpointer
right after it saved (the state a killed process leaves on disk); the real SIGKILL of a Ray
worker and of the driver is in tests/test_checkpoint_sweep.py.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_linfair import checkpointing, retries
from tune_linfair.checkpointing import DirectoryCheckpointer, for_stage
from tune_linfair.config import FinetuneSettings, PretrainSettings
from tune_linfair.data import get_dataset
from tune_linfair.errors import UserError
from tune_linfair.finetune import finetune
from tune_linfair.models import create_model, linearizable_layers
from tune_linfair.pretrain import pretrain
from tune_linfair.search import build_parser

torch.set_num_threads(1)


class Died(RuntimeError):
    """Stands for the process being killed right after a checkpoint was written."""


class DyingCheckpointer(DirectoryCheckpointer):
    """Saves like :class:`DirectoryCheckpointer`, then dies after saving epoch ``die_after``."""

    def __init__(self, folder: Path, every: int, die_after: int) -> None:
        super().__init__(folder, every)
        self.die_after = die_after
        self.saved: list[int] = []

    def save(self, state: dict, epoch: int) -> None:
        super().save(state, epoch)
        self.saved.append(epoch)
        if epoch == self.die_after:
            raise Died(epoch)


def scramble_rngs() -> None:
    """What a fresh process has: RNGs nowhere near where the dead run left them."""
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def models(digits):
    """A small all-ReLU resnet_mini (briefly trained) and a copy keeping ~10% of its ReLUs."""
    torch.manual_seed(0)
    base = create_model("resnet_mini", digits.num_classes, digits.input_shape, width=4)
    pretrain(base, digits, PretrainSettings(epochs=2), seed=0)
    student = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    for _, layer in linearizable_layers(student):
        layer.freeze((torch.rand(layer.mask.shape, generator=gen) < 0.1).float())
    return base, student


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("mitigation", "every", "die_after"),
    [("lagrangian", 1, 1), ("accuracy_gap", 2, 1), ("group_dro", 1, 2)],
)
def test_finetune_resumed_after_a_death_equals_the_uninterrupted_run(
    digits, models, tmp_path: Path, mitigation: str, every: int, die_after: int
) -> None:
    base, linearized = models
    settings = FinetuneSettings(
        mitigation=mitigation, mu=0.5, epsilon=1.0, dual_lr=0.5, eta=0.1, lr=0.01, epochs=4
    )
    straight = copy.deepcopy(linearized)
    expected = finetune(straight, base, digits, settings, seed=3)

    dying = DyingCheckpointer(tmp_path, every, die_after)
    with pytest.raises(Died):
        finetune(copy.deepcopy(linearized), base, digits, settings, seed=3, checkpoint=dying)
    assert dying.saved == list(range(every - 1, die_after + 1, every))

    scramble_rngs()
    resumed_model = copy.deepcopy(linearized)
    resumed = finetune(
        resumed_model, base, digits, settings, seed=3, checkpoint=DirectoryCheckpointer(tmp_path)
    )
    assert expected.resumed_from_epoch is None
    assert resumed.resumed_from_epoch == die_after + 1  # continued, not from epoch 0
    assert same_weights(resumed_model, straight)
    assert resumed.history == expected.history and resumed.best_epoch == expected.best_epoch
    assert resumed.steps == expected.steps
    for key, value in expected.multipliers.items():
        assert torch.equal(resumed.multipliers[key], value)
    assert any(float(v.abs().sum()) > 0 for v in expected.multipliers.values())


def test_base_training_resumed_equals_the_uninterrupted_run(digits, tmp_path: Path) -> None:
    """MultiStepLR milestones fall on both sides of the death (epochs 2 and 3 of 4)."""
    settings = PretrainSettings(epochs=4)

    def fresh():
        torch.manual_seed(0)
        return create_model("resnet_mini", digits.num_classes, digits.input_shape, width=4)

    straight = fresh()
    expected = pretrain(straight, digits, settings, seed=5)
    ckpt = for_stage(DyingCheckpointer(tmp_path, 1, 1), "base")
    with pytest.raises(Died):
        pretrain(fresh(), digits, settings, seed=5, checkpoint=ckpt)
    scramble_rngs()
    resumed_model = fresh()
    resumed = pretrain(
        resumed_model,
        digits,
        settings,
        seed=5,
        checkpoint=for_stage(DirectoryCheckpointer(tmp_path), "base"),
    )
    assert resumed.resumed_from_epoch == 2
    assert same_weights(resumed_model, straight) and resumed.history == expected.history


def test_a_state_of_another_stage_is_not_resumed(digits, models, tmp_path: Path) -> None:
    """A trial's checkpoint from base training must not restart its fine-tuning."""
    base, linearized = models
    settings = PretrainSettings(epochs=1)
    pretrain(
        copy.deepcopy(base),
        digits,
        settings,
        seed=0,
        checkpoint=for_stage(DirectoryCheckpointer(tmp_path), "base"),
    )
    assert checkpointing.load_state(tmp_path)["stage"] == "base"
    result = finetune(
        copy.deepcopy(linearized),
        base,
        digits,
        FinetuneSettings(epochs=1),
        checkpoint=for_stage(DirectoryCheckpointer(tmp_path), "finetune"),
    )
    assert result.resumed_from_epoch is None


def test_checkpoint_every_zero_never_saves(digits, models, tmp_path: Path) -> None:
    base, linearized = models
    finetune(
        copy.deepcopy(linearized),
        base,
        digits,
        FinetuneSettings(epochs=2),
        checkpoint=DirectoryCheckpointer(tmp_path, every=0),
    )
    assert list(tmp_path.iterdir()) == []


def test_options_default_resume_and_refuse() -> None:
    """Defaults for a new sweep; a resumed sweep keeps its recorded values (a changed
    --checkpoint-every applies, a changed --max-failures cannot: Tune restores its own)."""
    parse = build_parser().parse_args
    new = retries.settle(parse([]), None)
    assert (new.checkpoint_every, new.max_failures) == (
        retries.CHECKPOINT_EVERY,
        retries.MAX_FAILURES,
    )
    recorded = {"checkpoint_every": 4, "max_failures": 3}
    resumed = retries.settle(parse(["--resume"]), recorded)
    assert (resumed.checkpoint_every, resumed.max_failures) == (4, 3)
    changed = retries.settle(parse(["--checkpoint-every", "2", "--max-failures", "3"]), recorded)
    assert (changed.checkpoint_every, changed.max_failures) == (2, 3)
    with pytest.raises(UserError, match="keeps the sweep's --max-failures 3"):
        retries.settle(parse(["--max-failures", "1"]), recorded)
    old_record = retries.settle(parse([]), {"objective": "grid"})  # before these options
    assert old_record.max_failures == retries.MAX_FAILURES
