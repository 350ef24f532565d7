"""Private-inference cost estimated from the ReLU count, with constants from a cited source.

In two-party private inference with the Delphi protocol (Mishra et al., USENIX Security
2020) the linear layers are precomputed with homomorphic encryption offline and evaluated on
additive secret shares online, while every ReLU is a garbled circuit (GC); the ReLUs
dominate, so cost grows linearly with the ReLU count. This is why SNL, DeepReDuce and the
paper (Das, Romanelli, Fioretto, ICML 2024, Sec. 1-2) use the ReLU count as the cost.

Source of the constants: Garimella, Jha, Ghodsi, Garg, Reagen, "CryptoNite: Revealing the
Pitfalls of End-to-End Private Inference at Scale" (arXiv:2111.02583, 2021), their
measurements with the Delphi codebase for ResNet-18 on CIFAR-10:

- online, per ReLU: GC evaluation 18.3 us + GC encoding 3.6 us, and 1,184 bytes of input
  labels sent. The estimate uses 21.8 us per ReLU, the total this project has always used;
  the two rounded parts add to 21.9 us (both totals lie in the 21.80-22.00 us range that
  the rounded parts allow). Override ``online_latency_s_per_relu`` to use another total;
- offline, per ReLU: 17,072 bytes of garbled circuits stored by the client;
- the ReLU-independent linear part of that network: 0.43 s and about 5 MB online.

The model (per image, ``r`` ReLUs):

- ``est_online_latency_s = r * t_relu`` (``t_relu`` = 21.8e-6 s)
- ``est_online_comm_mb = r * b_online / 1e6``
- ``est_offline_storage_mb = r * b_offline / 1e6``
- with the linear part (only where it was measured; NaN otherwise):
  ``est_online_latency_total_s = est_online_latency_s + t_linear`` and
  ``est_online_comm_total_mb = est_online_comm_mb + c_linear``.

The estimates assume the network, protocol and hardware of the measurements; they rank
ReLU budgets, they do not predict a deployment. Megabytes are decimal (1 MB = 1e6 bytes).
:class:`CostModel` holds the constants; override any of them by keyword
(``CostModel(online_latency_s_per_relu=...)``, ``CRYPTONITE.replace(...)``) or from a YAML mapping
(:func:`load_cost_model`). :func:`pi_cost` keeps its ReLU-only output by default.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_linfair.errors import UserError, unknown

#: Bytes per (decimal) megabyte.
BYTES_PER_MB: float = 1e6
#: Online garbled-circuit evaluation time per ReLU, s (CryptoNite, Delphi, ResNet-18/CIFAR-10).
GC_EVAL_S_PER_RELU: float = 18.3e-6
#: Online garbled-circuit encoding time per ReLU, s (CryptoNite, Delphi, ResNet-18/CIFAR-10).
GC_ENCODE_S_PER_RELU: float = 3.6e-6


def _non_negative(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= 0):
        allowed = "a number >= 0 or null" if optional else "a number >= 0"
        raise UserError(f"cost model {name}={value!r} must be {allowed}")


@dataclass(frozen=True)
class CostModel:
    """Per-ReLU and linear-part private-inference costs (defaults: ReLU part of CryptoNite's
    Delphi ResNet-18 / CIFAR-10 measurements; the linear part unknown).

    - ``online_latency_s_per_relu`` (21.8e-6 s): online GC time per ReLU (evaluation
      18.3 us + encoding 3.6 us as published, :data:`GC_EVAL_S_PER_RELU`,
      :data:`GC_ENCODE_S_PER_RELU`; see the module docstring on the total);
    - ``online_comm_bytes_per_relu`` (1,184): online communication per ReLU;
    - ``offline_storage_bytes_per_relu`` (17,072): client GC storage per ReLU;
    - ``linear_online_s``, ``linear_online_mb``: the network's ReLU-independent online
      latency and communication, None where not measured (see :data:`CRYPTONITE_RESNET18`);
    - ``source``: where the numbers come from (saved next to results).
    """

    online_latency_s_per_relu: float = 21.8e-6
    online_comm_bytes_per_relu: float = 1_184.0
    offline_storage_bytes_per_relu: float = 17_072.0
    linear_online_s: float | None = None
    linear_online_mb: float | None = None
    source: str = "CryptoNite (Garimella et al. 2021), Delphi, ResNet-18 on CIFAR-10"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if field.name != "source":
                value = getattr(self, field.name)
                _non_negative(field.name, value, optional=field.name.startswith("linear_"))
        if not isinstance(self.source, str):
            raise UserError(f"cost model source={self.source!r} must be a string")

    def replace(self, **overrides: Any) -> CostModel:
        """A copy with some constants overridden (unknown names raise :class:`UserError`)."""
        return CostModel.from_mapping({**self.as_dict(), **overrides})

    def as_dict(self) -> dict[str, Any]:
        """The constants as a plain dict (for saving next to results)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CostModel:
        """Build from a mapping (e.g. parsed YAML); unknown keys raise :class:`UserError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise unknown("cost model constant", key, names)
        return cls(**dict(values))

    def estimate(self, relu_count: int) -> dict[str, float]:
        """Estimated cost of one image with ``relu_count`` ReLUs (formulas in the module
        docstring): the three ReLU-part keys and the two totals with the linear part (NaN
        where the linear part is unknown)."""
        count = float(_check_count(relu_count))
        latency = count * self.online_latency_s_per_relu
        comm = count * self.online_comm_bytes_per_relu / BYTES_PER_MB
        linear_s = math.nan if self.linear_online_s is None else self.linear_online_s
        linear_mb = math.nan if self.linear_online_mb is None else self.linear_online_mb
        return {
            "est_online_latency_s": latency,
            "est_online_comm_mb": comm,
            "est_offline_storage_mb": count * self.offline_storage_bytes_per_relu / BYTES_PER_MB,
            "est_online_latency_total_s": latency + linear_s,
            "est_online_comm_total_mb": comm + linear_mb,
        }


#: The ReLU part of CryptoNite's measurements (any network; linear part unknown).
CRYPTONITE = CostModel()
#: CryptoNite's measurements for ResNet-18 on CIFAR-10, with its linear part (0.43 s, ~5 MB).
CRYPTONITE_RESNET18 = CostModel(linear_online_s=0.43, linear_online_mb=5.0)

#: Online latency per ReLU, seconds (CryptoNite, Delphi, ResNet-18/CIFAR-10; module docstring).
ONLINE_LATENCY_S_PER_RELU: float = CRYPTONITE.online_latency_s_per_relu
#: Online communication per ReLU, bytes (CryptoNite, Delphi, ResNet-18/CIFAR-10).
ONLINE_COMM_BYTES_PER_RELU: float = CRYPTONITE.online_comm_bytes_per_relu
#: Offline garbled-circuit storage per ReLU, bytes (CryptoNite, Delphi, ResNet-18/CIFAR-10).
OFFLINE_STORAGE_BYTES_PER_RELU: float = CRYPTONITE.offline_storage_bytes_per_relu


def _check_count(relu_count: int) -> int:
    if isinstance(relu_count, bool) or not isinstance(relu_count, numbers.Integral):
        raise UserError(f"relu_count must be an integer, got {relu_count!r}")
    if relu_count < 0:
        raise UserError(f"relu_count must be non-negative, got {relu_count}")
    return int(relu_count)


def cost_model_for(model_name: str, input_shape: tuple[int, ...]) -> CostModel:
    """:data:`CRYPTONITE_RESNET18` (linear part known) for ``resnet18`` on 3x32x32 inputs, the
    network of the measurements; :data:`CRYPTONITE` (linear part unknown) otherwise."""
    if model_name == "resnet18" and tuple(input_shape) == (3, 32, 32):
        return CRYPTONITE_RESNET18
    return CRYPTONITE


def load_cost_model(path: str | Path, base: CostModel = CRYPTONITE) -> CostModel:
    """``base`` with the constants of a small YAML mapping at ``path`` overridden, e.g.
    ``online_latency_s_per_relu: 1.0e-5`` (unknown keys and a non-mapping file raise UserError)."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read cost model {str(path)!r}: {exc}") from None
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise UserError(f"cost model {str(path)!r} must be a YAML mapping of constant: value")
    return base.replace(**values)


def pi_cost(
    relu_count: int, model: CostModel = CRYPTONITE, *, include_linear: bool = False
) -> dict[str, float]:
    """Estimated private-inference cost of one image for a network with ``relu_count`` ReLUs.

    By default (unchanged output) the ReLU part only:

    - ``est_online_latency_s = relu_count * 21.8e-6``
    - ``est_online_comm_mb = relu_count * 1184 / 1e6``
    - ``est_offline_storage_mb = relu_count * 17072 / 1e6``

    ``model`` overrides the constants; ``include_linear=True`` adds
    ``est_online_latency_total_s`` and ``est_online_comm_total_mb`` (ReLU part + the model's
    linear part; NaN where it is unknown).
    """
    out = model.estimate(relu_count)
    if not include_linear:
        del out["est_online_latency_total_s"], out["est_online_comm_total_mb"]
    return out
