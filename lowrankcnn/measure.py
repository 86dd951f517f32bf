r"""Side-by-side wall-clock measurement: the one pipeline that deploys, times and counts models.

:func:`measure` takes built models and one input shape. Each model is prepared the same way (deployed for
inference, or as given for a training step; in every requested memory format; optionally
``torch.compile``\ d), then all of them are warmed up and timed interleaved (A, B, A, B, ...) in a single
:func:`~lowrankcnn.timing.interleaved` call, so machine drift hits them alike; each keeps its faster memory
format. :func:`lowrankcnn.bench.bench`, :mod:`lowrankcnn.demo` and the scripts in ``benchmarks/`` call it.

Conventions: MACs are per image for one forward pass (1 MAC = 2 FLOPs), counted by
:func:`~lowrankcnn.profile` on what was timed (``count="timed"``: the deployed form; undeployed rank-1
layers run, and are counted, assembled) or on the models as given (``count="given"``: rank-1 layers counted
decomposed, ``profile``'s default). ``mac_ratio = baseline MACs / MACs`` is the speed-up the counts promise;
``speedup = baseline median latency / median latency`` is what was measured; ``efficiency = speedup /
mac_ratio`` (1.0: every MAC saved was time saved).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from torch import nn

from .data.checks import MAX_BATCH_BYTES, check_int
from .deployment import LayerChoice, deploy_report
from .deployment import deploy as deploy_model
from .errors import ConfigError
from .layers.base import low_rank_layers
from .profiling import profile
from .timing import (
    MEMORY_FORMATS,
    TORCH_FORMATS,
    MemoryFormat,
    Timing,
    inference_fn,
    interleaved,
    train_step_fn,
)
from .utils import model_device, resolve_device

BenchDeploy = Literal["none", "factorized", "dense", "auto"]
DEPLOY_CHOICES: tuple[BenchDeploy, ...] = get_args(BenchDeploy)
Count = Literal["timed", "given"]
COUNTS: tuple[Count, ...] = get_args(Count)
MAX_REPEATS = 10_000
"""Most timed (and warm-up) rounds a benchmark takes; more is a typo that would run for days."""
Engine = Literal["torch", "onnxruntime"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
Progress = Callable[[str], None]
"""Receives one line per phase of a benchmark (and the rounds left while timing)."""


@dataclass(frozen=True)
class Measurement:
    """One model measured by :func:`measure`: counts per image, seconds per batch, ratios to the baseline."""

    name: str
    params: int
    macs: int
    timing: Timing
    """Seconds per batch of the fastest variant, ``variant``."""
    batch_size: int
    memory_format: MemoryFormat
    timings: Mapping[str, Timing]
    """Seconds per batch of every variant tried: memory formats (torch), deploy forms (``"onnxruntime dense"``)."""
    deploy_choices: tuple[LayerChoice, ...] = ()
    engine: Engine = "torch"
    variant: str = "contiguous"
    """The variant timed fastest (a memory format, or ``"onnxruntime <deploy form>"``)."""
    baseline: str | None = None
    baseline_macs: int | None = None
    baseline_seconds: float | None = None
    """The baseline's median seconds per batch."""

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.timing.median

    @property
    def speedup(self) -> float | None:
        """Baseline median latency / this model's (``None`` without a baseline)."""
        return self.baseline_seconds / self.timing.median if self.baseline_seconds is not None else None

    @property
    def mac_ratio(self) -> float | None:
        """Baseline MACs / this model's MACs: the speed-up the counts promise."""
        return self.baseline_macs / self.macs if self.baseline_macs is not None and self.macs else None

    @property
    def efficiency(self) -> float | None:
        """``speedup / mac_ratio``: 1.0 means every MAC saved was time saved."""
        speedup, ratio = self.speedup, self.mac_ratio
        return speedup / ratio if speedup is not None and ratio else None


def check_options(train: bool, deploy: str, repeats: object, warmup: object) -> None:
    """Raise a ``ConfigError`` for an unknown ``deploy``, a deployed training step, or a bad repeat count."""
    if deploy not in DEPLOY_CHOICES:
        raise ConfigError(f"bench: $deploy must be one of {', '.join(DEPLOY_CHOICES)}, got {deploy!r}", param="deploy")
    if train and deploy != "none":
        raise ConfigError(
            "bench: a training step times the model as trained; use $deploy=none with $train", param="deploy"
        )
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        check_int(name, value, low)
        if value > MAX_REPEATS:  # type: ignore[operator]
            raise ConfigError(f"bench: ${name} must be at most {MAX_REPEATS}, got {value}", param=name)


def _check_measure(
    models: Mapping[str, nn.Module], shape: Sequence[int], baseline: str | None, formats: Sequence[str], count: str
) -> None:
    if not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise ConfigError("measure: $models must map names to nn.Module instances (at least one)", param="models")
    if baseline is not None and baseline not in models:
        raise ConfigError(f"measure: $baseline {baseline!r} is not one of {list(models)}", param="baseline")
    if len(shape) != 4 or not all(type(s) is int and s > 0 for s in shape):
        raise ConfigError(f"measure: $input_shape must be 4 positive integers (N, C, H, W), got {shape!r}")
    if 4 * math.prod(shape) > MAX_BATCH_BYTES:
        raise ConfigError(f"measure: a float32 batch of {tuple(shape)} exceeds {MAX_BATCH_BYTES / 2**30:g} GiB")
    if isinstance(formats, str) or not formats or len(set(formats)) < len(formats) or set(formats) - {*MEMORY_FORMATS}:
        raise ConfigError(
            f"measure: $memory_formats must be distinct values of {MEMORY_FORMATS}, got {formats!r}",
            param="memory_formats",
        )
    if count not in COUNTS:
        raise ConfigError(f"measure: $count must be one of {', '.join(COUNTS)}, got {count!r}", param="count")


@dataclass(frozen=True)
class _Variant:
    """One way to run a model: a label, its memory format, its deploy target and the engine."""

    label: str
    fmt: MemoryFormat
    deploy: BenchDeploy
    engine: Engine


def _variants(engine: Engine, deploy: BenchDeploy, formats: Sequence[MemoryFormat], low_rank: bool) -> list[_Variant]:
    """torch: each memory format; onnxruntime (NCHW only): each deploy form ``auto`` stands for, whole-model (one,
    for a model without low-rank layers)."""
    if engine == "torch":
        return [_Variant(fmt, fmt, deploy, engine) for fmt in formats]
    if not low_rank:
        return [_Variant("onnxruntime", "contiguous", "factorized" if deploy == "auto" else deploy, engine)]
    targets: tuple[BenchDeploy, ...] = ("factorized", "dense") if deploy == "auto" else (deploy,)
    return [_Variant(f"onnxruntime {t}", "contiguous", t, engine) for t in targets]


def check_engine(engine: str, train: bool, compile: bool, device: torch.device) -> None:
    """Raise a ``ConfigError`` for an unknown engine, or onnxruntime asked for training, compile or a GPU."""
    if engine not in ENGINES:
        raise ConfigError(f"measure: $engine must be one of {', '.join(ENGINES)}, got {engine!r}", param="engine")
    if engine == "onnxruntime" and (train or compile or device.type != "cpu"):
        what = "a training step" if train else "torch.compile" if compile else f"device {device}"
        raise ConfigError(f"$engine=onnxruntime times CPU inference, not {what}", param="engine")


def _prepare(
    model: nn.Module, x: torch.Tensor, variant: _Variant, train: bool, compile: bool
) -> tuple[nn.Module, Callable[[], object]]:
    """The module to time (a deployed or plain copy of ``model``, in ``fmt``, on ``x``'s device) and its
    zero-argument callable (onnxruntime: its ONNX export in a session, checked against PyTorch)."""
    fmt, deploy = variant.fmt, variant.deploy
    x = x.contiguous(memory_format=TORCH_FORMATS[fmt])
    if train or deploy == "none":
        ready = copy.deepcopy(model).eval().to(device=x.device, memory_format=TORCH_FORMATS[fmt])
    else:
        channels_last = fmt == "channels_last"
        ready = deploy_model(model, deploy, channels_last=channels_last, input_shape=tuple(x.shape), device=x.device)
    if variant.engine == "onnxruntime":
        from .onnx_runtime import ort_inference_fn

        return ready, ort_inference_fn(ready, x, threads=torch.get_num_threads())
    timed = torch.compile(ready) if compile else ready
    if not train:
        return ready, inference_fn(timed, x)
    with torch.no_grad():
        out = ready(x[:1])
    classes = (out[0] if isinstance(out, tuple) else out).shape[-1]
    return ready, train_step_fn(timed, x, torch.randint(0, classes, (x.shape[0],), device=x.device))


def measure(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    baseline: str | None = None,
    *,
    train: bool = False,
    deploy: BenchDeploy = "auto",
    memory_formats: Sequence[MemoryFormat] = MEMORY_FORMATS,
    compile: bool = False,
    count: Count = "timed",
    repeats: int = 15,
    warmup: int = 3,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    engine: Engine = "torch",
) -> dict[str, Measurement]:
    """Time ``models`` interleaved on one random float32 batch of ``input_shape`` ``(N, C, H, W)``.

    Inference (``train=False``): each model is deployed (:func:`lowrankcnn.deploy` with target ``deploy``: an
    eval-mode, BN-folded copy; ``"none"``: an eval-mode copy as given) and timed as a no-grad forward. A training
    step (``train=True``, needs ``deploy="none"``) is forward + cross-entropy + backward + SGD step on a copy in
    training mode. The given models are not modified. Every model is prepared in each of ``memory_formats``
    (default both: the faster one counts); all (model, format) pairs are timed in one interleaved run of
    ``repeats`` rounds after ``warmup`` untimed ones, on ``device`` (default: the first model's; CUDA timings
    synchronize). Counts follow ``count`` (module doc); ratios are against ``models[baseline]`` (``None``: no
    ratios). ``progress`` receives a line per phase, the expected time once the first round is timed, and the
    rounds left. Memory is not checked here; :func:`bench` checks it before building.

    ``engine="onnxruntime"`` (CPU inference): each deployed model is exported to ONNX and timed in an onnxruntime
    session with torch's thread count (:mod:`lowrankcnn.onnx_runtime`; outputs checked against PyTorch first);
    ONNX has no memory format, and ``deploy="auto"`` times the whole model factorized and dense there, keeping
    the faster (a form a model cannot take, e.g. dense for a biased separable layer, is skipped).

    Returns:
        ``{name: Measurement}`` in the order of ``models``.

    Raises:
        ConfigError: a bad option, or ``baseline`` not among ``models``. ShapeError: a model refuses the input.
    """
    check_options(train, deploy, repeats, warmup)
    _check_measure(models, input_shape, baseline, memory_formats, count)
    say = progress or (lambda line: None)
    first = next(iter(models.values()))
    dev = resolve_device(str(device)) if device is not None else model_device(first)
    check_engine(engine, train, compile, dev)
    x = torch.randn(tuple(input_shape), device=dev)
    ready: dict[tuple[str, str], nn.Module] = {}
    fns: dict[tuple[str, str], Callable[[], object]] = {}
    tried: dict[str, list[_Variant]] = {}
    for name, model in models.items():
        tried[name] = []
        for variant in _variants(engine, deploy, memory_formats, has_low_rank(model)):
            what = "a training step" if train else f"deploy {variant.deploy}"
            say(f"preparing {name} ({what}, {variant.label})")
            try:
                ready[name, variant.label], fns[name, variant.label] = _prepare(model, x, variant, train, compile)
            except ConfigError:
                if variant.deploy != "dense" or deploy != "auto":
                    raise
                continue  # auto under onnxruntime: a model with no exact dense form keeps factorized
            tried[name].append(variant)
    say(f"timing {len(fns)} forms, {warmup} warm-up + {repeats} interleaved rounds")
    rest = warmup
    if warmup:  # the first warm-up round, timed, gives the expected time
        first_round = interleaved(fns, repeats=1, warmup=0, device=dev)
        rest = warmup - 1
        say(f"expected time: about {_duration(sum(t.median for t in first_round.values()) * (rest + repeats))}")
    timings = interleaved(
        fns, repeats=repeats, warmup=rest, device=dev, progress=lambda left: say(f"{left} rounds left")
    )
    results: dict[str, Measurement] = {}
    for name, model in models.items():
        best_variant = min(tried[name], key=lambda v: timings[name, v.label].median)
        best = best_variant.label
        winner = ready[name, best]
        counts = (
            profile(_on_cpu(winner), tuple(input_shape[1:]), rank1_form="assembled")
            if count == "timed"
            else profile(_on_cpu(model), tuple(input_shape[1:]))
        )
        results[name] = Measurement(
            name=name,
            params=counts.params,
            macs=counts.macs,
            timing=timings[name, best],
            batch_size=input_shape[0],
            memory_format=best_variant.fmt,
            timings={v.label: timings[name, v.label] for v in tried[name]},
            deploy_choices=tuple(deploy_report(winner)) if not (train or deploy == "none") else (),
            engine=engine,
            variant=best,
        )
    if baseline is None:
        return results
    ref = results[baseline]
    return {
        name: replace(m, baseline=baseline, baseline_macs=ref.macs, baseline_seconds=ref.timing.median)
        for name, m in results.items()
    }


def has_low_rank(model: nn.Module) -> bool:
    """Whether ``model`` holds a low-rank layer (``LowRankConv2d``)."""
    return bool(low_rank_layers(model))


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU, else a CPU copy (``profile`` counts on the CPU)."""
    return model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
