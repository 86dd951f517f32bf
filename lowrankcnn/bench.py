r"""Side-by-side wall-clock measurement: the one pipeline that deploys, times, counts and compares models.

:func:`measure` takes built models and one input shape. Each model is prepared the same way (deployed for
inference, or as given for a training step; in every requested memory format; optionally
``torch.compile``\ d), then all of them are warmed up and timed interleaved (A, B, A, B, ...) in a single
:func:`~lowrankcnn.timing.interleaved` call, so machine drift hits them alike; each keeps its faster memory
format. :func:`bench` builds a model and its baseline (usually its dense twin) from :class:`ModelSpec`\ s and
measures them. ``lowrankcnn bench``, :mod:`lowrankcnn.demo` and the scripts in ``benchmarks/`` all call these.

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
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import torch
from torch import nn

from .data.checks import MAX_BATCH_BYTES, check_input_size, check_int
from .deployment import LayerChoice, deploy_report
from .deployment import deploy as deploy_model
from .errors import ConfigError
from .models import ModelSpec, model_info
from .models.spec import is_factory_path
from .profiling import check_fits_memory, input_channels, memory_estimate, profile
from .tables import format_table
from .timing import (
    MEMORY_FORMATS,
    TORCH_FORMATS,
    MemoryFormat,
    Timing,
    inference_fn,
    interleaved,
    load_average,
    noise_warning,
    train_step_fn,
)
from .utils import resolve_device

BenchDeploy = Literal["none", "factorized", "dense", "auto"]
DEPLOY_CHOICES: tuple[BenchDeploy, ...] = get_args(BenchDeploy)
Count = Literal["timed", "given"]
COUNTS: tuple[Count, ...] = get_args(Count)
MAX_REPEATS = 10_000
"""Most timed (and warm-up) rounds a benchmark takes; more is a typo that would run for days."""
Progress = Callable[[str], None]
"""Receives one line per phase of a benchmark (and the rounds left while timing)."""


def dense_twin(name: str) -> str | None:
    """The dense model a zoo model is compared with by default (``ModelInfo.baseline``; ``None`` for a dense model)."""
    return model_info(name).baseline


def default_baseline(spec: ModelSpec) -> ModelSpec | None:
    """What ``spec`` is compared with by default: the model before conversion for a converted spec, else a
    registered model's dense twin (built as :func:`baseline_spec` does), else nothing."""
    if spec.lowrank is not None:
        return spec.dense
    return baseline_spec(dense_twin(spec.model), spec) if spec.registered else None


@dataclass(frozen=True)
class Measurement:
    """One model measured by :func:`measure`: counts per image, seconds per batch, ratios to the baseline."""

    name: str
    params: int
    macs: int
    timing: Timing
    """Seconds per batch in the faster memory format, ``memory_format``."""
    batch_size: int
    memory_format: MemoryFormat
    timings: Mapping[MemoryFormat, Timing]
    """Seconds per batch in every memory format tried."""
    deploy_choices: tuple[LayerChoice, ...] = ()
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


def _check_options(train: bool, deploy: str, repeats: object, warmup: object) -> None:
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


def _prepare(
    model: nn.Module, x: torch.Tensor, fmt: MemoryFormat, train: bool, deploy: BenchDeploy, compile: bool
) -> tuple[nn.Module, Callable[[], object]]:
    """The module to time (a deployed or plain copy of ``model``, in ``fmt``, on ``x``'s device) and its
    zero-argument callable."""
    x = x.contiguous(memory_format=TORCH_FORMATS[fmt])
    if train or deploy == "none":
        ready = copy.deepcopy(model).eval().to(device=x.device, memory_format=TORCH_FORMATS[fmt])
    else:
        channels_last = fmt == "channels_last"
        ready = deploy_model(model, deploy, channels_last=channels_last, input_shape=tuple(x.shape), device=x.device)
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

    Returns:
        ``{name: Measurement}`` in the order of ``models``.

    Raises:
        ConfigError: a bad option, or ``baseline`` not among ``models``. ShapeError: a model refuses the input.
    """
    _check_options(train, deploy, repeats, warmup)
    _check_measure(models, input_shape, baseline, memory_formats, count)
    say = progress or (lambda line: None)
    first = next(iter(models.values()))
    dev = resolve_device(str(device)) if device is not None else _device_of(first)
    x = torch.randn(tuple(input_shape), device=dev)
    ready: dict[tuple[str, MemoryFormat], nn.Module] = {}
    fns: dict[tuple[str, MemoryFormat], Callable[[], object]] = {}
    for name, model in models.items():
        for fmt in memory_formats:
            what = "a training step" if train else f"deploy {deploy}"
            say(f"preparing {name} ({what}, {fmt})")
            ready[name, fmt], fns[name, fmt] = _prepare(model, x, fmt, train, deploy, compile)
    say(f"timing {len(fns)} forms, {warmup} warm-up + {repeats} interleaved rounds")
    first_round = interleaved(fns, repeats=1, warmup=0, device=dev)  # also the first warm-up round
    per_round = sum(t.median for t in first_round.values())
    say(f"expected time: about {_duration(per_round * (max(warmup - 1, 0) + repeats))}")
    timings = interleaved(
        fns, repeats=repeats, warmup=max(warmup - 1, 0), device=dev, progress=lambda left: say(f"{left} rounds left")
    )
    results: dict[str, Measurement] = {}
    for name, model in models.items():
        best = min(memory_formats, key=lambda f: timings[name, f].median)
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
            memory_format=best,
            timings={f: timings[name, f] for f in memory_formats},
            deploy_choices=tuple(deploy_report(winner)) if not (train or deploy == "none") else (),
        )
    if baseline is None:
        return results
    ref = results[baseline]
    return {
        name: replace(m, baseline=baseline, baseline_macs=ref.macs, baseline_seconds=ref.timing.median)
        for name, m in results.items()
    }


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU, else a CPU copy (``profile`` counts on the CPU)."""
    return model if _device_of(model).type == "cpu" else copy.deepcopy(model).cpu()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class BenchSettings:
    """How :func:`bench` prepares and times both models (what is built is each one's :class:`ModelSpec`).

    Defaults are what a user should deploy: ``deploy=None`` is ``"auto"`` for inference (each model deployed in
    its fastest measured form: batch norms folded, per-layer form timed) and ``"none"`` for a training step
    (forward + cross-entropy + backward + SGD step on the training form); ``channels_last=None`` times both
    memory formats and keeps each model's faster one. ``device="auto"``: CUDA if available, else the CPU.
    """

    input_size: int | None = None
    batch_size: int = 64
    train: bool = False
    deploy: BenchDeploy | None = None
    channels_last: bool | None = None
    compile: bool = False
    repeats: int = 15
    warmup: int = 3
    device: str = "auto"

    @property
    def deploy_form(self) -> BenchDeploy:
        """``deploy`` with ``None`` resolved (``"auto"`` for inference, ``"none"`` for training)."""
        return self.deploy if self.deploy is not None else ("none" if self.train else "auto")

    @property
    def memory_formats(self) -> tuple[MemoryFormat, ...]:
        """The memory formats timed (``channels_last=None``: both)."""
        if self.channels_last is None:
            return MEMORY_FORMATS
        return ("channels_last",) if self.channels_last else ("contiguous",)

    def validate(self) -> None:
        """Raise a ``ConfigError`` naming the first setting that is invalid."""
        _check_options(self.train, self.deploy_form, self.repeats, self.warmup)
        check_int("batch_size", self.batch_size, 1)
        if self.input_size is not None:
            check_input_size(self.input_size)
        resolve_device(self.device)


def _label(spec: ModelSpec) -> str:
    return spec.name + (f" ({', '.join(f'{k}={v}' for k, v in spec.kwargs.items())})" if spec.kwargs else "")


@dataclass(frozen=True)
class BenchResult:
    """One side-by-side measurement of :func:`bench` (ratios: ``measured.speedup`` etc.); ``to_dict`` is the JSON
    form, ``table`` the text one."""

    model: ModelSpec
    baseline: ModelSpec | None
    settings: BenchSettings
    threads: int
    measured: Measurement
    baseline_measured: Measurement | None = None
    device: str = "cpu"
    noise: str | None = None
    """Why the timings cannot be trusted (``None``: a quiet run)."""

    def to_dict(self) -> dict:
        s, m, b = self.settings, self.measured, self.baseline_measured
        return {
            "model": self.model.name,
            "baseline": self.baseline.name if self.baseline else None,
            "mode": "train" if s.train else "inference",
            "input_size": s.input_size,
            "batch_size": s.batch_size,
            "deploy": s.deploy_form,
            "channels_last": s.channels_last,
            "memory_format": m.memory_format,
            "baseline_memory_format": b.memory_format if b else None,
            "device": self.device,
            "compile": s.compile,
            "width_mult": self.model.width_mult,
            "model_kwargs": dict(self.model.kwargs),
            "baseline_kwargs": dict(self.baseline.kwargs) if self.baseline else None,
            "threads": self.threads,
            "repeats": s.repeats,
            "macs": m.macs,
            "baseline_macs": b.macs if b else None,
            "params": m.params,
            "baseline_params": b.params if b else None,
            "latency_ms": m.timing.median * 1e3,
            "latency_spread": m.timing.spread,
            "baseline_latency_ms": b.timing.median * 1e3 if b else None,
            "baseline_latency_spread": b.timing.spread if b else None,
            "images_per_s": m.images_per_s,
            "baseline_images_per_s": b.images_per_s if b else None,
            "mac_ratio": m.mac_ratio,
            "speedup": m.speedup,
            "efficiency": m.efficiency,
            "deploy_choices": [asdict(c) for c in m.deploy_choices],
            "baseline_deploy_choices": [asdict(c) for c in b.deploy_choices] if b else [],
            "noise": self.noise,
        }

    def table(self) -> str:
        """Two rows (model, baseline) and a line with the ratios."""
        rows = [(self.model, self.measured)]
        if self.baseline is not None and self.baseline_measured is not None:
            rows.append((self.baseline, self.baseline_measured))
        body = [
            [
                _label(spec),
                f"{m.params:,}",
                f"{m.macs:,}",
                f"{m.timing.median * 1e3:.2f} ±{m.timing.spread * 100:.0f}%",
                f"{m.images_per_s:.0f}",
                m.memory_format.replace("contiguous", "NCHW").replace("channels_last", "channels-last"),
            ]
            for spec, m in rows
        ]
        s = self.settings
        what = "training step" if s.train else f"inference (deploy {s.deploy_form})"
        formats = "NCHW and channels-last, the faster kept" if len(s.memory_formats) > 1 else s.memory_formats[0]
        extras = [
            f"{self.threads} threads" if self.device == "cpu" else self.device,
            formats.replace("contiguous", "NCHW").replace("channels_last", "channels-last"),
            *(["compiled"] if s.compile else []),
        ]
        head = ("model", "params", "MACs/img", "latency ms", "images/s", "memory format")
        lines = [
            f"{what}, batch {s.batch_size}, input {s.input_size}, width {self.model.width_mult:g}, "
            f"{', '.join(extras)}; median of {s.repeats} interleaved runs (± interquartile range)",
            format_table(head, body, left=1),
        ]
        m = self.measured
        if m.speedup is not None and m.mac_ratio is not None and m.efficiency is not None:
            lines.append(
                f"speed-up {m.speedup:.2f}x, MAC ratio {m.mac_ratio:.2f}x, efficiency {m.efficiency:.2f} "
                "(speed-up / MAC ratio)"
            )
        for c in m.deploy_choices:
            timed = ", ".join(f"{form} {ms:.3f} ms" for form, ms in c.ms.items())
            note = f" ({c.note})" if c.note else ""
            lines.append(f"  {c.name}: {c.form}" + (f" ({timed})" if timed else "") + note)
        if self.noise:
            lines.append(f"warning: {self.noise}")
        return "\n".join(lines)


def baseline_spec(baseline: str | ModelSpec | None, model: ModelSpec) -> ModelSpec | None:
    """``baseline`` as a spec: a name is built like ``model`` (classes, input channels, width) with those of
    ``model``'s keywords it accepts (so ``bn=True`` applies to both); a spec is taken as given."""
    if baseline is None or isinstance(baseline, ModelSpec):
        return baseline
    if is_factory_path(baseline):
        return ModelSpec(baseline, model.num_classes, model.in_chans)
    accepted = model_info(baseline).kwargs
    kwargs = {k: v for k, v in model.kwargs.items() if k in accepted}
    return ModelSpec(baseline, model.num_classes, model.in_chans, model.width_mult, kwargs)


def bench(
    model: str | ModelSpec,
    baseline: str | ModelSpec | None = None,
    settings: BenchSettings | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Build ``model`` and ``baseline`` (see :func:`baseline_spec`) and :func:`measure` them; nothing is
    allocated before the models, a batch and its activations are known to fit in memory. ``progress`` receives
    the memory needed, each phase, the expected time and the rounds left; the result carries a noise warning
    when the timings cannot be trusted (:func:`~lowrankcnn.timing.noise_warning`).

    Raises:
        ConfigError: a bad setting or model argument, a batch that would not fit in memory, or two models that
            take different input channels.
    """
    s = settings or BenchSettings()
    s.validate()
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model)
    spec.validate()
    twin = baseline_spec(baseline, spec)
    if twin is not None:
        twin.validate()
    if s.input_size is None:  # a copy: the caller's settings stay as given
        if spec.info is None:
            raise ConfigError(f"bench: {spec.name} is not registered; give its $input_size", param="input_size")
        s = replace(s, input_size=spec.info.input_size)
    size = s.input_size
    specs = {"model": spec, **({"baseline": twin} if twin is not None else {})}
    metas = {key: sp.create("meta") for key, sp in specs.items()}  # nothing allocated yet
    channels = {input_channels(m) for m in metas.values()}
    if len(channels) != 1 or None in channels:
        raise ConfigError(
            f"bench: {' and '.join(sp.name for sp in specs.values())} do not take the same known number of input "
            f"channels ({', '.join(map(str, channels))}); set $in_chans",
            param="in_chans",
        )
    in_chans = channels.pop()
    needed = 0
    for key, sp in specs.items():
        what = f"bench: {sp.name} at width {sp.width_mult:g} on batches of {s.batch_size} images of {size}x{size}"
        params = ("batch_size", "input_size", "width_mult")
        shapes = check_fits_memory(metas[key], size, s.batch_size, what, params, in_chans=in_chans, training=s.train)
        needed = max(needed, memory_estimate(shapes, s.batch_size, s.train))
    say = progress or (lambda line: None)
    say(f"building {' and '.join(sp.name for sp in specs.values())}; about {needed / 2**30:.1f} GiB of memory")
    device = resolve_device(s.device)
    built = {key: sp.create().to(device) for key, sp in specs.items()}
    load_before = load_average()
    measured = measure(
        built,
        (s.batch_size, in_chans, size, size),
        "baseline" if twin is not None else None,
        train=s.train,
        deploy=s.deploy_form,
        memory_formats=s.memory_formats,
        compile=s.compile,
        repeats=s.repeats,
        warmup=s.warmup,
        device=device,
        progress=progress,
    )
    noise = noise_warning({(n, f): t for n, m in measured.items() for f, t in m.timings.items()}, load_before)
    return BenchResult(
        spec, twin, s, torch.get_num_threads(), measured["model"], measured.get("baseline"), str(device), noise
    )
