"""What ``align`` changes: low-rank VGG-11s with basis groups aligned to 1, 8 or 16 channels, timed in PyTorch and
in onnxruntime against their dense twin ``vgg11_gmp``, all interleaved in one loop per setting.

    python benchmarks/align.py --out results/align     # the table (about 5 minutes on 2 cores)
    python benchmarks/align.py --quick                  # small sizes, 2 repeats: checks that it all runs

onnxruntime's x86 convolutions run in NCHWc blocks of 8 channels (AVX2) or 16 (AVX-512) and keep a channel concat
in that layout only if every input is a multiple of the block (``nchwc_transformer.cc``); a composite layer's
groups are concatenated, so ``create_model(..., align=16)`` sizes them in multiples of 16 where the width allows.
Every model is deployed factorized (batch norms folded, one conv per basis group, NCHW), exported to ONNX in memory
(``lowrankcnn.onnx_runtime.ort_inference_fn``: checked against PyTorch to a relative error below 1e-4 before it is
timed) and timed with the same thread count in both engines. An align that builds the same structure as a smaller
one is not timed again. The NCHWc columns come from the graph onnxruntime optimized (``optimized_model_path``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

import lowrankcnn
from lowrankcnn.layers import CompositeConv2d
from lowrankcnn.onnx_runtime import ort_inference_fn
from lowrankcnn.tables import markdown_table
from lowrankcnn.timing import inference_fn, interleaved
from lowrankcnn.utils import atomic_write_text

DENSE = "vgg11_gmp"
LOWRANK = ("vgg11_gmp_lr", "vgg11_gmp_lr_join_wfull")
ALIGNS = (1, 8, 16)
SETTINGS = (  # (label, input size, batch, width_mult, classes, repeats)
    ("32 px, batch 64, width 0.25", 32, 64, 0.25, 10, 15),
    ("32 px, batch 64, width 0.375", 32, 64, 0.375, 10, 15),
    ("32 px, batch 64, width 0.5", 32, 64, 0.5, 10, 15),
    ("224 px, batch 8, full width", 224, 8, 1.0, 1000, 7),
)
QUICK = (("32 px, batch 8, width 0.25 (quick)", 32, 8, 0.25, 10, 2),)


def cpu_flags() -> list[str]:
    """The AVX flags of this CPU (``/proc/cpuinfo``), as ``grep -o 'avx[^ ]*' /proc/cpuinfo | sort -u``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"avx[^ \n]*", text)))


def structure(model: torch.nn.Module) -> tuple[str, ...]:
    """Every composite layer's basis (what ``align`` changes)."""
    return tuple(m.describe() for m in model.modules() if isinstance(m, CompositeConv2d))


def nchwc(path: Path) -> dict[str, int]:
    """Counts in onnxruntime's optimized graph: convs (all, and in NCHWc blocks), channel concats (all, and on NCHWc
    tensors: every input made by an NCHWc node), and layout reorders (copies between NCHW and NCHWc)."""
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def blocked(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.domain == "com.microsoft.nchwc" and node.op_type != "ReorderOutput"

    convs = [n for n in graph.node if n.op_type in ("Conv", "FusedConv")]
    concats = [n for n in graph.node if n.op_type == "Concat"]
    return {
        "convs": len(convs),
        "nchwc_convs": sum(n.domain == "com.microsoft.nchwc" for n in convs),
        "concats": len(concats),
        "nchwc_concats": sum(all(blocked(i) for i in n.input) for n in concats),
        "reorders": sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in graph.node),
    }


def measure_setting(label: str, size: int, batch: int, width: float, classes: int, repeats: int, threads: int) -> dict:
    """Build, deploy and export every model of one setting, then time them all interleaved (torch and onnxruntime)."""
    print(f"== {label}", flush=True)
    x = torch.randn(batch, 3, size, size)
    rows: list[dict] = []
    fns: dict[tuple[str, int, str], object] = {}
    built: dict[tuple[str, tuple[str, ...]], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, aligns in ((DENSE, (1,)), *((m, ALIGNS) for m in LOWRANK)):
            for align in aligns:
                torch.manual_seed(0)
                model = lowrankcnn.create_model(name, classes, 3, width, align=align).eval()
                same = built.setdefault((name, structure(model)), align)
                profile = lowrankcnn.profile(model, size)
                row = {
                    "model": name,
                    "align": align,
                    "same_as": same if same != align else None,
                    "basis": structure(model),
                    "macs": profile.macs,
                    "misaligned_16": len(profile.misaligned(16)),
                    "misaligned_8": len(profile.misaligned(8)),
                }
                rows.append(row)
                if same != align:
                    continue
                deployed = lowrankcnn.deploy(
                    model, target="factorized", channels_last=False, input_shape=(1, 3, size, size)
                )
                graph = Path(tmp) / f"{name}_{align}.onnx"
                start = time.perf_counter()
                engine = ort_inference_fn(deployed, x, threads, optimized_model_path=graph)
                row["ort_relative_error"] = engine.relative_error
                row.update(nchwc(graph))
                print(
                    f"  {name} align {align}: exported and checked in {time.perf_counter() - start:.1f} s "
                    f"(relative error {engine.relative_error:.1e})",
                    flush=True,
                )
                fns[(name, align, "torch")] = inference_fn(deployed, x)
                fns[(name, align, "onnxruntime")] = engine
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        timings = interleaved(fns, repeats=repeats, warmup=2)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
    for row in rows:
        key = (row["model"], row["same_as"] or row["align"])
        for engine in ("torch", "onnxruntime"):
            t = timings[(*key, engine)]
            dense = timings[(DENSE, 1, engine)]
            row[f"{engine}_ms"] = 1e3 * t.median
            row[f"{engine}_spread"] = t.spread
            row[f"{engine}_speedup"] = dense.median / t.median
    return {
        "setting": label,
        "input_size": size,
        "batch": batch,
        "width_mult": width,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "timing_seconds": seconds,
        "rows": rows,
    }


def readme(env: dict, results: list[dict]) -> str:
    """The results README: command, machine, one table per setting."""
    loads = "; ".join(
        f"{r['setting']}: {r['load_average_before']:.1f} before timing, {r['load_average_after']:.1f} after"
        for r in results
    )
    return f"""# `align`: low-rank VGG-11 groups aligned to 1, 8, 16 channels, PyTorch vs onnxruntime

Made by

```sh
python {shlex.join(sys.argv)}
```

Machine: {env["cpus"]} CPUs with `{" ".join(env["avx_flags"])}`, so onnxruntime's NCHWc block is
{env["nchwc_block"]} channels; Python {env["python"]}, torch {env["torch"]}, onnxruntime {env["onnxruntime"]}.
{env["threads"]} thread(s) in both engines (torch: `set_num_threads`; onnxruntime: `intra_op_num_threads`, 1 inter-op
thread, `ORT_ENABLE_ALL`). The machine is shared with other jobs, so timings are noisy; 1-minute load averages:
{loads}.

Every model is built with `create_model(name, classes, 3, width, align=A)`, deployed factorized
(`deploy(model, target="factorized", channels_last=False, input_shape=...)`: batch norms folded, one conv per basis
group, NCHW), exported to ONNX in memory and checked against PyTorch (relative error below 1e-4) by
`lowrankcnn.onnx_runtime.ort_inference_fn`. All models of a setting, in both engines, are timed interleaved in one
loop (median of the repeats ± interquartile range / median). Speed-up: the dense twin `vgg11_gmp`'s median in the same
engine / the model's. *ORT vs torch*: the model's torch median / its onnxruntime median. *misaligned layers /16*:
layers with a group (or conv output) width that is not a multiple of 16 (`profile(model).misaligned(16)`). NCHWc
columns, from the graph onnxruntime optimized: convs run in NCHWc blocks, channel concats whose inputs are all NCHWc
tensors, and layout reorders (copies between NCHW and NCHWc). `A (= B)`: align A builds the same model as B (timed
once).

{chr(10).join(f"### {r['setting']} ({r['repeats']} repeats){chr(10)}{chr(10)}{table(r)}{chr(10)}" for r in results)}"""


def table(result: dict) -> str:
    """One setting as a markdown table."""
    head = (
        "model",
        "align",
        "groups (first layers)",
        "misaligned layers /16",
        "MACs/img",
        "torch ms",
        "torch speed-up",
        "ORT ms",
        "ORT speed-up",
        "ORT vs torch",
        "NCHWc convs",
        "NCHWc concats",
        "reorders",
    )
    body = []
    timed = {(r["model"], r["align"]): r for r in result["rows"] if r["same_as"] is None}
    for r in result["rows"]:
        t = timed[(r["model"], r["same_as"] or r["align"])]
        body.append(
            [
                r["model"],
                str(r["align"]) + (f" (= {r['same_as']})" if r["same_as"] else ""),
                " ; ".join(r["basis"][:2]).replace("|", "\\|") or "dense",  # escaped for markdown
                str(r["misaligned_16"]),
                f"{r['macs']:,}",
                f"{t['torch_ms']:.2f} ±{100 * t['torch_spread']:.0f}%",
                f"{t['torch_speedup']:.2f}x",
                f"{t['onnxruntime_ms']:.2f} ±{100 * t['onnxruntime_spread']:.0f}%",
                f"{t['onnxruntime_speedup']:.2f}x",
                f"{t['torch_ms'] / t['onnxruntime_ms']:.2f}x",
                f"{t['nchwc_convs']}/{t['convs']}",
                f"{t['nchwc_concats']}/{t['concats']}",
                str(t["reorders"]),
            ]
        )
    return markdown_table(head, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write align.json and README.md there")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "avx_flags": flags,
        "nchwc_block": 16 if "avx512f" in flags else 8 if "avx2" in flags else None,
    }
    print(f"CPU flags: {' '.join(flags)}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    results = [measure_setting(*s, threads=args.threads) for s in (QUICK if args.quick else SETTINGS)]
    text = "\n\n".join(f"### {r['setting']}\n\n{table(r)}" for r in results)
    print(text)
    for r in results:
        print(
            f"{r['setting']}: load average {r['load_average_before']:.1f} before, {r['load_average_after']:.1f} after"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "align.json", json.dumps({"env": env, "results": results}, indent=1) + "\n")
        atomic_write_text(args.out / "README.md", readme(env, results))
        print(f"wrote {args.out / 'align.json'} and README.md", file=sys.stderr)


if __name__ == "__main__":
    main()
