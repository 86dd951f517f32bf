"""Running a model once to look inside it (profile, deploy's trace, output ranks): hooks in, one forward, hooks out.

``probe(model, x, handles, training=...)`` sets the mode, runs ``model(x)`` (or ``run()``), and always restores
the mode and removes the hooks; a ``RuntimeError`` from a torch layer refusing the input becomes one
:class:`~lowrankcnn.errors.ShapeError` with the caller's message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import LowRankCNNError, ShapeError


def zeros_for(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A zero batch of ``shape`` on the device (and floating dtype) of ``model``'s parameters."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


def probe(
    model: nn.Module,
    handles: Iterable[RemovableHandle],
    refusal: str,
    hint: str,
    param: str,
    run: Callable[[], object],
    training: bool | None = None,
) -> object:
    """Run ``run()`` with ``model`` in ``training`` mode (``None``: as it is) and the hooks ``handles`` attached.

    Raises:
        ShapeError: a torch layer refused the input: ``"{refusal} ({torch's message}); {hint}"``, naming ``param``
            as the argument to fix. The library's own errors pass through unchanged.
    """
    was_training = model.training
    try:
        if training is not None:
            model.train(training)
        return run()
    except LowRankCNNError:
        raise
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ShapeError(f"{refusal} ({first}); {hint}", param=param) from err
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
