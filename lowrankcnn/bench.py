"""Side-by-side wall-clock benchmark of a model against a baseline (usually its dense twin).

Both are built, prepared the same way (deployed for inference, or as trained for
a training step; optionally channels-last and/or ``torch.compile``d), warmed up,
then timed interleaved (A, B, A, B, ...) so machine drift hits both alike.

Conventions: MACs are per image for one forward pass of what actually runs
(1 MAC = 2 FLOPs); ``mac_ratio = baseline_macs / macs`` is the speed-up the MAC
count promises; ``speedup = baseline latency / latency`` is what was measured;
``efficiency = speedup / mac_ratio`` (1.0 means every MAC saved was time saved).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import torch

from .data.checks import check_input_size, check_int
from .deployment import deploy, deploy_report
from .errors import ConfigError
from .models import create_model, model_info
from .profiling import check_fits_memory, profile
from .tables import format_table
from .timing import Timing, inference_fn, interleaved
from .utils.losses import classification_loss

BenchDeploy = Literal["none", "factorized", "dense", "auto"]
DEPLOY_CHOICES: tuple[BenchDeploy, ...] = get_args(BenchDeploy)
MAX_REPEATS = 10_000
"""Most timed (and warm-up) rounds a benchmark takes; more is a typo that would run for days."""


def dense_twin(name: str) -> str | None:
    """The dense model a zoo model is compared with by default (``None`` for a dense model)."""
    twins = (
        (r"kim_(rank1|flat)_(\w+)", r"kim_dense_\2"),
        (r"vgg11_gmp_.+", "vgg11_gmp"),
        (r"nin_.+", "nin"),
        (r"googlenet_.+", "googlenet"),
    )
    for pattern, twin in twins:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, twin, name)
    return None


@dataclass
class BenchSettings:
    """How both models are built and timed.

    ``deploy`` applies to inference only ("none" times the modules as trained); a training step
    is forward + cross-entropy + backward + SGD step on the training form.
    """

    input_size: int | None = None
    batch_size: int = 64
    train: bool = False
    deploy: BenchDeploy = "factorized"
    channels_last: bool = False
    compile: bool = False
    width_mult: float = 1.0
    num_classes: int | None = None
    in_chans: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    repeats: int = 15
    warmup: int = 3

    def validate(self) -> None:
        """Raise a ``ConfigError`` naming the first setting that is invalid (model arguments are checked by
        ``create_model``)."""
        if self.deploy not in DEPLOY_CHOICES:
            raise ConfigError(
                f"bench: $deploy must be one of {', '.join(DEPLOY_CHOICES)}, got {self.deploy!r}", param="deploy"
            )
        if self.train and self.deploy != "none":
            raise ConfigError(
                "bench: a training step times the model as trained; use $deploy=none with $train", param="deploy"
            )
        check_int("batch_size", self.batch_size, 1)
        for name, low in (("repeats", 1), ("warmup", 0)):
            check_int(name, getattr(self, name), low)
            if getattr(self, name) > MAX_REPEATS:
                raise ConfigError(
                    f"bench: ${name} must be at most {MAX_REPEATS}, got {getattr(self, name)}", param=name
                )
        if self.input_size is not None:
            check_input_size(self.input_size)
        if not isinstance(self.width_mult, (int, float)) or not math.isfinite(self.width_mult) or self.width_mult <= 0:
            raise ConfigError(
                f"bench: $width_mult must be a positive number, got {self.width_mult!r}", param="width_mult"
            )


@dataclass
class Candidate:
    """A prepared model: the timed callable and the counts of what it runs."""

    name: str
    run: Callable[[], object]
    macs: int
    params: int
    choices: list[dict]


def _build(name: str, s: BenchSettings) -> torch.nn.Module:
    return create_model(name, num_classes=s.num_classes, in_chans=s.in_chans, width_mult=s.width_mult, **s.model_kwargs)


def prepare(name: str, s: BenchSettings) -> Candidate:
    """Build ``name`` and the zero-argument callable that runs one inference batch or training step.

    The model is first built on the meta device (nothing allocated) to check that it, a batch and its
    activations fit in memory (a ``ConfigError`` naming the setting to lower if not).
    """
    size = s.input_size or model_info(name).input_size
    with torch.device("meta"):
        meta = _build(name, s)
    what = f"bench: {name} at width {s.width_mult:g} on batches of {s.batch_size} images of {size}x{size}"
    check_fits_memory(meta, size, s.batch_size, what, ("batch_size", "input_size", "width_mult"), training=s.train)
    model = _build(name, s)
    x = torch.randn(s.batch_size, model.in_chans, size, size)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    choices: list[dict] = []
    if s.train:
        counted = profile(model, size, rank1_form="assembled")  # eval-mode graph: GoogLeNet's aux heads not counted
        model = model.train().to(memory_format=memory_format)
        step_model = torch.compile(model) if s.compile else model
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        y = torch.randint(0, s.num_classes or model_info(name).num_classes, (s.batch_size,))

        def run() -> object:
            optimizer.zero_grad(set_to_none=True)
            loss = classification_loss(step_model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        return Candidate(name, run, counted.macs, counted.params, choices)
    model.eval()
    if s.deploy != "none":
        model = deploy(model, s.deploy, channels_last=s.channels_last, input_shape=tuple(x.shape))
        choices = [asdict(c) for c in deploy_report(model)]
    else:
        model = model.to(memory_format=memory_format)
    counted = profile(model, size, in_chans=x.shape[1], rank1_form="assembled")
    return Candidate(
        name, inference_fn(torch.compile(model) if s.compile else model, x), counted.macs, counted.params, choices
    )


@dataclass
class BenchResult:
    """One side-by-side measurement; ``to_dict`` is the JSON form."""

    model: str
    baseline: str | None
    settings: BenchSettings
    threads: int
    macs: int
    params: int
    timing: Timing
    baseline_macs: int | None = None
    baseline_params: int | None = None
    baseline_timing: Timing | None = None
    deploy_choices: list[dict] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.settings.batch_size / self.timing.median

    @property
    def baseline_images_per_s(self) -> float | None:
        return self.settings.batch_size / self.baseline_timing.median if self.baseline_timing else None

    @property
    def speedup(self) -> float | None:
        return self.baseline_timing.median / self.timing.median if self.baseline_timing else None

    @property
    def mac_ratio(self) -> float | None:
        return self.baseline_macs / self.macs if self.baseline_macs else None

    @property
    def efficiency(self) -> float | None:
        return self.speedup / self.mac_ratio if self.speedup and self.mac_ratio else None

    def to_dict(self) -> dict:
        s = self.settings
        return {
            "model": self.model,
            "baseline": self.baseline,
            "mode": "train" if s.train else "inference",
            "input_size": s.input_size,
            "batch_size": s.batch_size,
            "deploy": s.deploy,
            "channels_last": s.channels_last,
            "compile": s.compile,
            "width_mult": s.width_mult,
            "threads": self.threads,
            "repeats": s.repeats,
            "macs": self.macs,
            "baseline_macs": self.baseline_macs,
            "params": self.params,
            "baseline_params": self.baseline_params,
            "latency_ms": self.timing.median * 1e3,
            "latency_spread": self.timing.spread,
            "baseline_latency_ms": self.baseline_timing.median * 1e3 if self.baseline_timing else None,
            "baseline_latency_spread": self.baseline_timing.spread if self.baseline_timing else None,
            "images_per_s": self.images_per_s,
            "baseline_images_per_s": self.baseline_images_per_s,
            "mac_ratio": self.mac_ratio,
            "speedup": self.speedup,
            "efficiency": self.efficiency,
            "deploy_choices": self.deploy_choices,
        }

    def table(self) -> str:
        """Two rows (model, baseline) and a line with the ratios."""
        rows = [(self.model, self.params, self.macs, self.timing)]
        if self.baseline_timing is not None:
            rows.append((self.baseline, self.baseline_params, self.baseline_macs, self.baseline_timing))
        body = [
            [
                name,
                f"{params:,}",
                f"{macs:,}",
                f"{t.median * 1e3:.2f} ±{t.spread * 100:.0f}%",
                f"{self.settings.batch_size / t.median:.0f}",
            ]
            for name, params, macs, t in rows
        ]
        s = self.settings
        what = "training step" if s.train else f"inference (deploy {s.deploy})"
        extras = [
            f"{self.threads} threads",
            *(["channels-last"] if s.channels_last else []),
            *(["compiled"] if s.compile else []),
        ]
        lines = [
            f"{what}, batch {s.batch_size}, input {s.input_size}, width {s.width_mult:g}, {', '.join(extras)}; "
            f"median of {s.repeats} interleaved runs (± interquartile range)",
            format_table(("model", "params", "MACs/img", "latency ms", "images/s"), body, left=1),
        ]
        if self.speedup is not None:
            lines.append(
                f"speed-up {self.speedup:.2f}x, MAC ratio {self.mac_ratio:.2f}x, efficiency {self.efficiency:.2f} "
                "(speed-up / MAC ratio)"
            )
        for c in self.deploy_choices:
            timed = ", ".join(f"{form} {ms:.3f} ms" for form, ms in c["ms"].items())
            note = f" ({c['note']})" if c.get("note") else ""
            lines.append(f"  {c['name']}: {c['form']}" + (f" ({timed})" if timed else "") + note)
        return "\n".join(lines)


def bench(model: str, baseline: str | None = None, settings: BenchSettings | None = None) -> BenchResult:
    """Time ``model`` against ``baseline`` (interleaved) and return the measurement."""
    s = settings or BenchSettings()
    s.validate()
    for name in filter(None, (model, baseline)):
        model_info(name)  # a ConfigError naming the close matches for an unknown name
    if s.input_size is None:  # a copy: the caller's settings stay as given
        s = replace(s, input_size=model_info(model).input_size)
    a = prepare(model, s)
    fns = {"model": a.run}
    b = prepare(baseline, s) if baseline else None
    if b is not None:
        fns["baseline"] = b.run
    timings = interleaved(fns, repeats=s.repeats, warmup=s.warmup)
    return BenchResult(
        model=model,
        baseline=baseline,
        settings=s,
        threads=torch.get_num_threads(),
        macs=a.macs,
        params=a.params,
        timing=timings["model"],
        baseline_macs=b.macs if b else None,
        baseline_params=b.params if b else None,
        baseline_timing=timings.get("baseline"),
        deploy_choices=a.choices,
    )
