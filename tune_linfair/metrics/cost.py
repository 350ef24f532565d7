"""Private-inference cost estimated from the ReLU count (DESIGN.md section 6).

In two-party private inference with the Delphi protocol (Mishra et al., USENIX Security
2020) the linear layers are cheap (precomputed with homomorphic encryption offline, additive
secret sharing online) and the cost is dominated by the garbled circuits that evaluate the
ReLUs, so cost grows linearly with the ReLU count; this is why SNL, DeepReDuce and the paper
(Das, Romanelli, Fioretto, ICML 2024, Sec. 1-2) use the ReLU count as the cost measure.

The per-ReLU constants below are Delphi protocol measurements for ResNet-18 on CIFAR as
recorded in DESIGN.md section 6 (on client-side garbled-circuit storage as a bottleneck see
also Garimella et al., "CryptoNite: Revealing the Pitfalls of End-to-End Private Inference
at Scale", arXiv:2111.02583); they are the only place these numbers live. The estimates
ignore the (small) cost of linear layers and assume the same network and hardware setting as
the measurements, so they are for comparing budgets, not for predicting a deployment.
Megabytes are decimal: 1 MB = 1e6 bytes.
"""

from __future__ import annotations

import numbers

from tune_linfair.errors import UserError

#: Online latency per ReLU, seconds (Delphi, ResNet-18/CIFAR; DESIGN.md section 6).
ONLINE_LATENCY_S_PER_RELU: float = 21.8e-6
#: Online communication per ReLU, bytes (Delphi, ResNet-18/CIFAR; DESIGN.md section 6).
ONLINE_COMM_BYTES_PER_RELU: float = 1_184.0
#: Offline garbled-circuit storage per ReLU, bytes (Delphi, ResNet-18/CIFAR; DESIGN.md sec. 6).
OFFLINE_STORAGE_BYTES_PER_RELU: float = 17_072.0
#: Bytes per (decimal) megabyte.
BYTES_PER_MB: float = 1e6


def pi_cost(relu_count: int) -> dict[str, float]:
    """Estimated private-inference cost of one image for a network with ``relu_count`` ReLUs.

    - ``est_online_latency_s = relu_count * 21.8e-6``
    - ``est_online_comm_mb = relu_count * 1184 / 1e6``
    - ``est_offline_storage_mb = relu_count * 17072 / 1e6``
    """
    if isinstance(relu_count, bool) or not isinstance(relu_count, numbers.Integral):
        raise UserError(f"relu_count must be an integer, got {relu_count!r}")
    if relu_count < 0:
        raise UserError(f"relu_count must be non-negative, got {relu_count}")
    count = float(relu_count)
    return {
        "est_online_latency_s": count * ONLINE_LATENCY_S_PER_RELU,
        "est_online_comm_mb": count * ONLINE_COMM_BYTES_PER_RELU / BYTES_PER_MB,
        "est_offline_storage_mb": count * OFFLINE_STORAGE_BYTES_PER_RELU / BYTES_PER_MB,
    }
