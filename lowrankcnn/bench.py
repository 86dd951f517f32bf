r"""``bench``: a model and its baseline (usually its dense twin) built from :class:`ModelSpec`\ s, checked against
memory, and measured side by side (:func:`lowrankcnn.measure.measure`); ``lowrankcnn bench`` prints its result.

The defaults are what a user should deploy: each model in its fastest measured form (``deploy`` auto, the faster
memory format), the dense baseline treated alike (batch norms folded, its faster memory format). Ratios:
``speedup = baseline latency / latency``, ``mac_ratio = baseline MACs / MACs``, ``efficiency = speedup /
mac_ratio`` (1.0 is the physical limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .data.checks import check_input_size, check_int
from .errors import ConfigError
from .measure import (
    COUNTS,
    DEPLOY_CHOICES,
    ENGINES,
    MAX_REPEATS,
    BenchDeploy,
    Count,
    Engine,
    Measurement,
    Progress,
    check_engine,
    check_options,
    measure,
)
from .models import ModelSpec, model_info
from .models.spec import is_factory_path
from .profiling import check_fits_memory, input_channels, memory_estimate
from .tables import format_table
from .timing import MEMORY_FORMATS, MemoryFormat, cpu_snapshot, load_average, noise_warning, other_cores
from .utils import resolve_device

__all__ = [
    "COUNTS",
    "DEPLOY_CHOICES",
    "ENGINES",
    "MAX_REPEATS",
    "BenchDeploy",
    "BenchResult",
    "BenchSettings",
    "Count",
    "Measurement",
    "MEMORY_FORMATS",
    "baseline_spec",
    "bench",
    "default_baseline",
    "dense_twin",
    "measure",
]


def dense_twin(name: str) -> str | None:
    """The dense model a zoo model is compared with by default (``ModelInfo.baseline``; ``None`` for a dense model)."""
    return model_info(name).baseline


def default_baseline(spec: ModelSpec) -> ModelSpec | None:
    """What ``spec`` is compared with by default: the model before conversion for a converted spec, else a
    registered model's dense twin (built as :func:`baseline_spec` does), else nothing."""
    if spec.lowrank is not None:
        return spec.dense
    return baseline_spec(dense_twin(spec.model), spec) if spec.registered else None


@dataclass
class BenchSettings:
    """How :func:`bench` prepares and times both models (what is built is each one's :class:`ModelSpec`).

    Defaults are what a user should deploy: ``deploy=None`` is ``"auto"`` for inference (each model deployed in
    its fastest measured form: batch norms folded, per-layer form timed) and ``"none"`` for a training step
    (forward + cross-entropy + backward + SGD step on the training form); ``channels_last=None`` times both
    memory formats and keeps each model's faster one. ``device="auto"``: CUDA if available, else the CPU.
    ``engine="onnxruntime"`` times both models' ONNX exports in onnxruntime sessions instead (CPU inference; see
    :func:`~lowrankcnn.measure.measure`).
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
    engine: Engine = "torch"

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
        check_options(self.train, self.deploy_form, self.repeats, self.warmup)
        check_int("batch_size", self.batch_size, 1)
        if self.input_size is not None:
            check_input_size(self.input_size)
        check_engine(
            self.engine, self.train, self.compile, resolve_device(self.device if self.engine == "torch" else "cpu")
        )


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
            "engine": s.engine,
            "variant": m.variant,
            "baseline_variant": b.variant if b else None,
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
                _variant_text(m.variant),
            ]
            for spec, m in rows
        ]
        s = self.settings
        what = "training step" if s.train else f"inference (deploy {s.deploy_form})"
        if s.engine == "onnxruntime":
            formats = "onnxruntime" + (
                ", factorized and dense timed, the faster kept" if s.deploy_form == "auto" else ""
            )
        elif len(s.memory_formats) > 1:
            formats = "NCHW and channels-last, the faster kept"
        else:
            formats = _variant_text(s.memory_formats[0])
        extras = [
            f"{self.threads} threads" if self.device == "cpu" else self.device,
            formats,
            *(["compiled"] if s.compile else []),
        ]
        head = ("model", "params", "MACs/img", "latency ms", "images/s", "ran as")
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


def _variant_text(variant: str) -> str:
    return variant.replace("contiguous", "NCHW").replace("channels_last", "channels-last")


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
    device = resolve_device(s.device if s.engine == "torch" else "cpu")
    built = {key: sp.create().to(device) for key, sp in specs.items()}
    load_before, before = load_average(), cpu_snapshot()
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
        engine=s.engine,
    )
    reported = {n: m.timing for n, m in measured.items()}  # the variants reported, not the slower ones dropped
    noise = noise_warning(reported, load_before, other_cores(before, cpu_snapshot()))
    return BenchResult(
        spec, twin, s, torch.get_num_threads(), measured["model"], measured.get("baseline"), str(device), noise
    )
