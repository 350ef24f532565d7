"""Full float32 for measurements, whatever precision training uses.

Training runs under bf16 autocast on CUDA (and on CPU with ``cpu_bf16``). bf16 keeps 8
significant bits: a logit of a few units carries an error of about 0.02-0.04, as large as
the per-group excess losses that Theorem 4.4 is checked against. So everything the package
*measures* (evaluation logits, the cached teacher logits, group losses, gradient norms,
Hessian eigenvalues, margins and boundary distances) runs inside :func:`float32`, which
switches autocast off on every device, even when the caller holds an autocast context, and
asks CUDA for IEEE float32 matrix products and convolutions instead of TF32 (10 significant
bits; cuDNN convolutions default to TF32 on Ampere and later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch


@contextmanager
def float32() -> Iterator[None]:
    """Autocast off on CPU and CUDA, TF32 off for CUDA matmuls and cuDNN convolutions.

    Restores every setting on exit. Tensors keep their dtype: a float32 model computes in
    float32 (the package's models are float32; autocast is the only reduced precision).
    TF32 is switched with the ``allow_tf32`` flags, the form every PyTorch version and
    library reads consistently (torch 2.9's ``fp32_precision`` for convolutions makes the
    ``allow_tf32`` query raise while it is set).
    """
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    with ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_initialized():  # a CUDA model in this process
            stack.enter_context(torch.autocast("cuda", enabled=False))
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved
