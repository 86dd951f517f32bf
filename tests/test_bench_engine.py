"""``bench --engine onnxruntime``: both deployed models exported to ONNX and timed in onnxruntime sessions,
interleaved, with the same report; the faster whole-model form is kept under ``auto``."""

import json

import pytest
from model_helpers import no_dense_form_model

from lowrankcnn.bench import BenchSettings, bench
from lowrankcnn.cli import main
from lowrankcnn.errors import ConfigError
from lowrankcnn.measure import measure
from lowrankcnn.models import ModelSpec

SMALL = BenchSettings(input_size=32, batch_size=2, repeats=2, warmup=1, engine="onnxruntime")


def test_onnxruntime_bench_times_both_forms_of_the_low_rank_model():
    result = bench(ModelSpec("vgg11_gmp_lr", width_mult=0.125), "vgg11_gmp", SMALL)
    m, b = result.measured, result.baseline_measured
    assert set(m.timings) == {"onnxruntime factorized", "onnxruntime dense"}
    assert m.variant == min(m.timings, key=lambda k: m.timings[k].median)
    assert set(b.timings) == {"onnxruntime"} and b.memory_format == "contiguous"
    assert m.speedup == pytest.approx(b.timing.median / m.timing.median)
    row = result.to_dict()
    assert row["engine"] == "onnxruntime" and row["variant"] == m.variant
    assert "onnxruntime, factorized and dense timed, the faster kept" in result.table()


def test_onnxruntime_auto_skips_a_form_the_model_cannot_take():
    model = no_dense_form_model()
    out = measure({"sf": model}, (2, 1, 28, 28), engine="onnxruntime", repeats=1, warmup=0)
    assert set(out["sf"].timings) == {"onnxruntime factorized"}


def test_onnxruntime_engine_refuses_what_it_cannot_time(capsys):
    with pytest.raises(ConfigError, match="engine=onnxruntime times CPU inference, not a training step"):
        bench("nin_c3_lr", None, BenchSettings(input_size=16, train=True, engine="onnxruntime"))
    with pytest.raises(ConfigError, match="engine must be one of torch, onnxruntime"):
        BenchSettings(engine="tensorrt").validate()
    args = ["bench", "--model", "nin_c3_lr", "--width-mult", "0.125", "--input-size", "16", "--batch-size", "2"]
    assert main([*args, "--repeats", "2", "--engine", "onnxruntime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "onnxruntime"
    assert main([*args, "--engine", "onnxruntime", "--compile"]) == 2
    assert "--engine onnxruntime times CPU inference, not torch.compile" in capsys.readouterr().err
