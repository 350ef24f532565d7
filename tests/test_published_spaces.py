"""Paper-scale search spaces run the published schedules; their ``*_fast`` twins are shorter.

Published (SNL's released code, NYU-DICE-Lab/selective_network_linearization): one Adam at
lr 1e-3 for weights and masks, L1 coefficient 1e-5 grown x1.1 per stalled epoch after 5
warm-up epochs, threshold 1e-2, batch 128, at most 2,000 epochs; then 100 epochs of KD
fine-tuning (SGD lr 1e-3, momentum 0.9, weight decay 5e-4, cosine).
"""

from __future__ import annotations

import pytest

from tune_linfair.spaces import list_spaces, load_space

PAPER_SCALE = [
    "cifar10_resnet18_snl",
    "cifar10_resnet18_deepreduce",
    "cifar10_vgg19_snl",
    "cifar10_wrn22_8_snl",
    "svhn_resnet18_snl",
    "utkface_age_resnet18_snl",
    "utkface_age_resnet34_snl",
    "utkface_race_resnet18_snl",
    "utkface_race_resnet34_snl",
]


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_published_schedule_and_fast_twin(name):
    published, fast = load_space(name), load_space(f"{name}_fast")
    lin, ft = published.experiment.linearize, published.experiment.finetune
    assert (lin.snl_lr, lin.snl_mask_lr, lin.c0, lin.c_growth) == (1e-3, None, 1e-5, 1.1)
    assert (lin.threshold, lin.warmup_checks, lin.c_every) == (1e-2, 5, None)
    assert (lin.batch_size, lin.max_epochs) == (128, 2000)
    assert (ft.epochs, ft.momentum, ft.weight_decay, ft.batch_size) == (100, 0.9, 5e-4, 128)
    assert published.grid["lr"] == [0.001]
    assert fast.experiment.finetune.epochs == 20
    assert fast.experiment.base == published.experiment.base
    assert fast.grid == published.grid
    assert fast.name == f"{name}_fast"


def test_every_fast_space_has_a_published_twin():
    names = set(list_spaces())
    fast = {n for n in names if n.endswith("_fast")}
    assert {f"{n}_fast" for n in PAPER_SCALE} == fast
