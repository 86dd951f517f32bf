"""Automatic per-layer rank (Cuttlefish, Wang et al., MLSys 2023): the scaled stable rank, and when it has settled.

Stable rank of a conv weight ``W`` ``(C_out, C_in, k_h, k_w)``, viewed as the ``(C_out, C_in k_h k_w)`` matrix with
singular values ``σ``: ``⌊Σσ² / σ_max²⌋`` (at least 1, at most the full rank ``min(C_out, C_in k_h k_w)``). A random
initialization already has a stable rank well below full (about 36 of 64 for a 64 -> 64 3x3 conv), so Cuttlefish
scales each layer's measurement by ``full rank / stable rank at initialization``: a layer's rank is
``min(full, ⌈stable × scale⌉)``, full rank at init and falling as training concentrates the spectrum.

When to switch (:func:`settled`): the rank of every tracked layer is measured once per epoch, before the epoch
trains; each layer's series is smoothed by an exponential moving average, and a layer has settled once the mean
absolute slope of the smoothed series over its last ``window`` points is at most ``threshold`` ranks per epoch
(relaxed 2.5x when only two layers are still moving, 5x for the last one, as Cuttlefish; a settled layer stays
settled). Cuttlefish smooths with α = 2/16 over an 11-epoch window, a 0.1 rank/epoch threshold and no switch before
epoch 15, tuned for 300-epoch runs, where those settle around epoch 30-80; from a full-rank start the same EMA needs
about 30 epochs just to forget the initial value. For runs of 10-30 epochs the defaults here are α = 1/2, a 2-epoch
window and 1 rank/epoch (integer ranks jitter by one), with the series starting after the first trained epoch (the
measurement at initialization only sets the scale); the trainer's ``warmup_dense`` caps the wait.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

EMA_ALPHA = 0.5
"""Smoothing of the per-epoch rank series (Cuttlefish: 2/16, for runs of 300 epochs)."""
WINDOW = 2
"""Epochs of smoothed rank a layer must hold still for (Cuttlefish: 11)."""
THRESHOLD = 1.0
"""Mean absolute slope of the smoothed rank, ranks per epoch, at or below which a layer has settled (Cuttlefish:
0.1)."""


def full_rank(weight: torch.Tensor) -> int:
    """``min(C_out, C_in k_h k_w)`` of a conv weight (any ``(C_out, ...)`` tensor)."""
    return min(weight.shape[0], weight[0].numel())


@torch.no_grad()
def stable_rank(weight: torch.Tensor) -> int:
    """``⌊Σσ² / σ_max²⌋`` of ``weight`` viewed as ``(C_out, rest)``, computed in float64 on the CPU (1 for a zero
    weight)."""
    sigma = torch.linalg.svdvals(weight.detach().reshape(weight.shape[0], -1).to("cpu", torch.float64))
    top = sigma.max().item() if sigma.numel() else 0.0
    if top == 0.0:
        return 1
    ratio = (sigma.square().sum() / top**2).item()
    return max(1, min(full_rank(weight), math.floor(ratio * (1 + 1e-9))))  # 4 equal values: 3.9999999999999996


def scaled_rank(weight: torch.Tensor, init_stable_rank: int) -> int:
    """Cuttlefish's rank of ``weight``: ``min(full, ⌈stable_rank × full / init_stable_rank⌉)``."""
    full = full_rank(weight)
    return max(1, min(full, math.ceil(stable_rank(weight) * full / max(1, init_stable_rank))))


def _smoothed(series: Sequence[float], alpha: float) -> list[float]:
    ema = [float(series[0])]
    for value in series[1:]:
        ema.append(alpha * value + (1 - alpha) * ema[-1])
    return ema


def mean_slope(series: Sequence[float], window: int = WINDOW, alpha: float = EMA_ALPHA) -> float:
    """Mean ``|gradient|`` (central differences, one-sided at the ends, as ``numpy.gradient``) of the smoothed
    ``series`` over its last ``window`` points; ``inf`` while the series is shorter than ``window + 1``."""
    if len(series) < window + 1:
        return math.inf
    ema = _smoothed(series, alpha)
    n = len(ema)
    grad = [ema[1] - ema[0], *((ema[i + 1] - ema[i - 1]) / 2 for i in range(1, n - 1)), ema[-1] - ema[-2]]
    tail = grad[-window:]
    return sum(abs(g) for g in tail) / len(tail)


def settled(
    history: Sequence[Mapping[str, int]],
    already: Sequence[str] = (),
    window: int = WINDOW,
    threshold: float = THRESHOLD,
    alpha: float = EMA_ALPHA,
) -> list[str]:
    """The layers whose rank has settled after the per-epoch measurements ``history`` (``[{layer: rank}, ...]``,
    oldest first), including those ``already`` settled; see the module doc for the rule."""
    if not history:
        return list(already)
    layers = list(history[-1])
    done = set(already)
    moving = [name for name in layers if name not in done]
    limit = threshold * {2: 2.5, 1: 5.0}.get(len(moving), 1.0)
    for name in moving:
        if mean_slope([epoch[name] for epoch in history if name in epoch], window, alpha) <= limit:
            done.add(name)
    return [name for name in layers if name in done]
