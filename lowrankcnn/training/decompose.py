"""Post-training decomposition (Jaderberg et al. 2014; the baseline Ioannou et al. argue against): a trained dense
run's convs fitted by a low-rank method, saved as a new run ready to fine-tune (``lowrankcnn decompose``).

:func:`decompose_run` reads a dense checkpoint, converts its model with ``init="fit"`` (truncated SVD for ``svd``
and ``sf``, least squares for the composite methods, ALS for ``rank1``; ``rank="auto"``: Cuttlefish's scaled
stable rank of each trained weight, the scale taken from a fresh initialization of the same model) and writes a
run directory at epoch 0 with the source's recipe (its epochs and learning rate may be changed). ``lowrankcnn train
--resume OUT`` (``Trainer.resume``) then fine-tunes it, resumably like any run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..convert import ConversionReport
from ..errors import ConfigError
from ..layers.base import low_rank_layers
from .checkpoint import build_model, checkpoint_path, load_trained_model
from .config import TrainConfig
from .lowrank_phase import LowRankPhase, start_auto, switch
from .trainer import Trainer


def decompose_run(
    checkpoint: str | Path,
    method: str,
    out: str | Path,
    *,
    rank: int | str | None = None,
    rank_ratio: float | None = None,
    keep_dense: list[str] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    overwrite: bool = False,
    trust_factory: bool = False,
    threads: int | None = None,
) -> tuple[TrainConfig, ConversionReport | None, LowRankPhase]:
    """Write the decomposed run of the dense run ``checkpoint`` in ``out`` (see the module doc).

    Returns:
        The new run's configuration, the conversion report (``None`` when automatic ranks left every layer dense)
        and the run's phase (its ``ranks``, with ``rank="auto"``).

    ``threads``: the new run's thread count (default: the dense run's; it is part of a run's configuration).

    Raises:
        CheckpointError: the checkpoint is missing, corrupt or an untrusted factory's. ConfigError: it is already
            low-rank, ``out`` is its own folder, or a bad method, rank or budget. RunDirectoryError: ``out`` holds a
            run and not ``overwrite``.
    """
    source = checkpoint_path(checkpoint)
    if Path(out).resolve() == source.resolve().parent:
        raise ConfigError(f"$out {out} is the folder of the dense run being decomposed; give another $out")
    model, config, state = load_trained_model(source, trust_factory=trust_factory)
    if low_rank_layers(model):
        raise ConfigError(f"{source} is a {config.model_label} run, already low-rank; decompose a dense run")
    auto = rank == "auto"
    if auto and method != "svd":
        raise ConfigError(f"$rank auto chooses channel ranks: it needs $method svd, not {method!r}", param="rank")
    new = replace(
        config,
        out=str(out),
        lowrank=method,
        rank=None if auto else rank,  # automatic ranks are per layer, in the run's phase
        rank_ratio=rank_ratio,
        keep_dense=list(keep_dense or []),
        lowrank_kwargs={},  # the dense run's have no meaning for the new method
        dense_if_faster=False,
        threads=config.threads if threads is None else threads,
        warmup_dense=0,
        init="composite",
        frobenius_decay=0.0,
        epochs=config.epochs if epochs is None else epochs,
        lr=config.lr if lr is None else lr,
    )
    new.validate()
    options = new.lowrank_options()
    if auto:
        torch.manual_seed(config.seed)
        phase = start_auto(build_model(config, state["data_info"]), method, options)
    else:
        phase = LowRankPhase()
    phase.source = str(source)
    converted, report = switch(model, method, options, phase, 0, auto, count=True)
    with Trainer(new, overwrite=overwrite, verbose=False, start_from=(converted.state_dict(), phase)) as trainer:
        trainer.commit_start()
        return trainer.config, report, phase
