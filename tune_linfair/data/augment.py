"""Batch augmentation on tensors: random crop with zero padding and horizontal flip.

The standard CIFAR recipe (pad 4, random 32x32 crop, flip with probability 0.5), done on a
whole batch with one gather on the batch's device instead of per-image PIL transforms
(airbench's approach), so data can stay on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4
) -> torch.Tensor:
    """Randomly crop (after zero padding by ``pad``) and horizontally flip each image.

    ``x`` is (N, C, H, W) on any device. Each image gets its own offsets
    ``dy, dx ~ U{0..2*pad}`` into the padded image and a flip with probability 0.5; the
    output pixel ``(i, j)`` is ``padded[dy + i, dx + j]``, or ``padded[dy + i, dx + W-1-j]``
    when flipped. Random numbers come from ``generator`` (on its own device, CPU or CUDA,
    then moved to ``x``'s device), or from the default generator of ``x``'s device.
    Returns a new contiguous tensor of the same shape and dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects (N, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, c, h, w = x.shape
    rng_device = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=rng_device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=rng_device).to(x.device)
    flip = (torch.rand(n, generator=generator, device=rng_device) < 0.5).to(x.device)

    padded = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Channels last so that advanced indexing over (batch, rows, cols) gives (N, H, W, C).
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
