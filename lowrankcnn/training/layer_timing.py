"""Which converted layers train faster than the dense convs they replace: Cuttlefish's profiling of which layers to
factorize (``TrainConfig.dense_if_faster``).

Fewer MACs do not make a small layer faster: a 16-channel 3x3 conv split into two convs pays two kernel launches
and two memory passes for a saving of a few thousand MACs. Cuttlefish times its network's stages dense and
factorized and keeps the leading ones, where factorizing does not pay, dense. Here each converted layer is timed
on its own: a training step (forward, then backward of the output's sum) of the dense conv and of its low-rank
replacement, interleaved, on a random input of the shape it sees in the model (found by one forward pass of an
example batch), by :func:`lowrankcnn.timing.fastest`. A layer stays dense unless its low-rank form is faster
beyond the noise. The random inputs come from a generator of their own, so timing leaves the run's random stream
as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..timing import fastest

REPEATS = 10
"""Timed steps per form and round (up to three rounds until the decision is clear)."""


def input_shapes(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, torch.Size]:
    """The input shape of each module ``names`` names when ``model`` runs on ``example`` (one no-grad forward)."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # returns None: the input is unchanged
            shapes.setdefault(name, args[0].shape)

        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def _step(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A training step of ``module`` alone (forward, backward of the sum); gradients land in its own copy."""
    layer = copy.deepcopy(module).train()

    def run() -> object:
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        out.sum().backward()
        return out

    return run


def dense_is_faster(
    dense: nn.Module,
    converted: nn.Module,
    names: Sequence[str],
    example_shape: tuple[int, ...],
    repeats: int = REPEATS,
) -> dict[str, dict[str, float]]:
    """The layers of ``names`` whose dense conv (in ``dense``) trains at least as fast as its low-rank form (in
    ``converted``), timed on the inputs a batch of ``example_shape`` ``(N, C, H, W)`` gives them, with the median
    milliseconds of each form: ``{name: {"dense": ms, "low-rank": ms}}``."""
    device = next(dense.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    shapes = input_shapes(dense, names, torch.randn(example_shape, generator=generator, device=device))
    keep: dict[str, dict[str, float]] = {}
    for name in names:
        x = torch.randn(shapes[name], generator=generator, device=device)
        fns = {"dense": _step(dense.get_submodule(name), x), "low-rank": _step(converted.get_submodule(name), x)}
        winner, ms, _ = fastest(fns, repeats, device, fallback="dense")
        if winner == "dense":
            keep[name] = ms
    return keep
