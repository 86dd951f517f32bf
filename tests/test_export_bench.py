"""Export (ONNX checked with onnxruntime, TorchScript), the bench command, torch.compile."""

import json

import pytest
import torch
from conftest import rel_err

from lowrankcnn import create_model, list_models, model_info
from lowrankcnn.bench import BenchSettings, bench, dense_twin
from lowrankcnn.cli import main
from lowrankcnn.deployment import deploy
from lowrankcnn.errors import ConfigError
from lowrankcnn.export import export_model, onnx_max_abs_diff, torchscript_max_abs_diff
from lowrankcnn.models import ModelSpec


@pytest.fixture(scope="module")
def checkpoint(kim_run_copy) -> str:
    """A one-epoch kim_rank1_cifar10 (width 0.25, batch norm) on a Fashion-MNIST subset padded to 32."""
    return str(kim_run_copy / "last.pt")


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    model = create_model("vgg11_gmp_lr", in_chans=1, num_classes=10, width_mult=0.25, bn=True).eval()
    deployed = deploy(model, "factorized")
    path = export_model(deployed, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx", "onnx")
    assert path.exists() and not list(tmp_path.glob(".*tmp"))
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    x = torch.randn(5, 1, 28, 28)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        diff = onnx_max_abs_diff(path, x, deployed(x))
    assert diff < 1e-4


def test_torchscript_export_matches(tmp_path):
    model = create_model("nin_rank1", width_mult=0.25, bn=True).eval()
    deployed = deploy(model, "dense")
    path = export_model(deployed, torch.randn(2, 3, 30, 30), tmp_path / "m.pt", "torchscript")
    x = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        assert torchscript_max_abs_diff(path, x, deployed(x)) < 1e-5


def test_export_refuses_training_mode_and_unknown_formats(tmp_path):
    model = create_model("nin_c3_lr", width_mult=0.25)
    with pytest.raises(ConfigError, match="training mode"):
        export_model(model.train(), torch.randn(1, 3, 30, 30), tmp_path / "m.pt", "torchscript")
    with pytest.raises(ConfigError, match="fmt must be one of onnx, torchscript"):
        export_model(model.eval(), torch.randn(1, 3, 30, 30), tmp_path / "m.tflite", "tflite")
    assert not list(tmp_path.iterdir())


def test_cli_export_torchscript_and_errors(checkpoint, tmp_path, capsys):
    out = tmp_path / "kim.pt"
    assert main(["export", "--checkpoint", checkpoint, "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |difference| vs PyTorch" in text and out.exists()
    with pytest.warns(DeprecationWarning):  # torch 2.13 deprecates TorchScript; loading still works
        loaded = torch.jit.load(str(out))
    assert loaded(torch.randn(4, 1, 32, 32)).shape == (4, 10)
    args = ["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "x.onnx"), "--format", "onnx"]
    assert main([*args, "--channels-last"]) == 2
    assert "ONNX has no memory format" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_export_onnx(checkpoint, tmp_path, capsys):
    out = tmp_path / "kim.onnx"
    assert main(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(out), "--deploy", "dense"]) == 0
    assert "exported to" in capsys.readouterr().out and out.exists()


def test_dense_twins():
    assert dense_twin("vgg11_gmp_lr_join") == "vgg11_gmp"
    assert dense_twin("kim_rank1_mnist") == "kim_dense_mnist"
    assert dense_twin("nin_c3_lr") == "nin"
    assert dense_twin("googlenet_lr") == "googlenet"
    assert dense_twin("vgg11_gmp") is None and dense_twin("kim_dense_cifar10") is None


@pytest.mark.parametrize("train", [False, True])
def test_bench_reports_consistent_numbers(train):
    settings = BenchSettings(
        input_size=32, batch_size=4, train=train, deploy="none" if train else "factorized", repeats=3
    )
    result = bench(ModelSpec("vgg11_gmp_lr", width_mult=0.125), "vgg11_gmp", settings)
    d = result.to_dict()
    for key in ("model", "baseline", "macs", "baseline_macs", "speedup", "efficiency", "images_per_s"):
        assert d[key] is not None
    assert d["baseline_images_per_s"] > 0 and d["macs"] < d["baseline_macs"] and d["width_mult"] == 0.125
    assert d["speedup"] == pytest.approx(d["baseline_latency_ms"] / d["latency_ms"])
    assert d["efficiency"] == pytest.approx(d["speedup"] * d["macs"] / d["baseline_macs"])
    assert d["images_per_s"] == pytest.approx(4 / d["latency_ms"] * 1e3)
    assert "speed-up" in result.table()


def test_bench_settings_are_checked():
    with pytest.raises(ValueError, match="training step times the model as trained"):
        bench("nin_c3_lr", settings=BenchSettings(train=True, deploy="factorized"))
    with pytest.raises(ValueError, match="unknown model"):
        bench("no_such_model")
    with pytest.raises(ValueError, match="deploy must be one of"):
        bench("nin_c3_lr", settings=BenchSettings(deploy="fast"))


def test_cli_bench_json_auto_deploy(capsys):
    args = ["bench", "--model", "kim_rank1_cifar10", "--batch-size", "2", "--width-mult", "0.25", "--repeats", "2"]
    assert (
        main([*args, "--deploy", "auto", "--channels-last", "--json", "--threads", str(torch.get_num_threads())]) == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["baseline"] == "kim_dense_cifar10" and d["channels_last"] and d["deploy"] == "auto"
    layers = [c for c in d["deploy_choices"] if c["form"] != "unfolded"]
    assert len(layers) == 6 and all(c["form"] in ("factorized", "dense") for c in layers)
    kept = [c for c in d["deploy_choices"] if c["form"] == "unfolded"]  # the Kim CIFAR net's BNs after its ReLUs
    assert len(kept) == 3 and all(c["note"] for c in kept)
    assert main([*args, "--train", "--deploy", "dense"]) == 2
    assert "use --deploy none with --train" in capsys.readouterr().err


def compiles_and_matches(name: str, backend: str) -> None:
    """``torch.compile(fullgraph=True)`` of the model as trained and as deployed matches eager mode."""
    torch._dynamo.reset()
    model = create_model(name, width_mult=0.25).eval()
    size = min(model_info(name).input_size, 64)
    x = torch.randn(2, model.in_chans, size, size)
    for candidate in (model, deploy(model, "factorized")):
        compiled = torch.compile(candidate, backend=backend, fullgraph=True)  # fullgraph: no graph breaks allowed
        with torch.no_grad():
            assert rel_err(compiled(x), candidate(x)) < 1e-5, (name, backend)


DEEPER_TWINS = ("resnet34", "resnet56", "resnet50_lr_join", "resnet50_rank1", "googlenet_lr_conv1")
"""Models whose blocks and layers are exactly those of a model compiled here (resnet34: resnet18's; resnet56:
resnet20's; resnet50's bottleneck through resnet50 and resnet50_lr; googlenet_lr_conv1: googlenet_lr's blocks and a
composite conv like every other): only the slow tier compiles them."""


DENSE_TWINS = ("resnet18", "resnet20", "resnet50", "googlenet")
"""Dense models whose blocks are compiled here in their low-rank twin (the same block code, composite convs instead
of ``nn.Conv2d``): only the slow tier compiles them."""
SLOW_TWINS = [n for n in list_models() if n.startswith(DEEPER_TWINS) or n in DENSE_TWINS]


@pytest.mark.parametrize("name", [n for n in list_models() if n not in SLOW_TWINS])
def test_torch_compile_captures_every_model(name):
    compiles_and_matches(name, "aot_eager")  # Dynamo + AOTAutograd, without code generation


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_TWINS)
def test_torch_compile_captures_the_deeper_twins(name):
    compiles_and_matches(name, "aot_eager")


@pytest.mark.parametrize("name", ["kim_rank1_cifar10"])
def test_torch_compile_inductor(name):
    compiles_and_matches(name, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_torch_compile_inductor_every_model(name):
    compiles_and_matches(name, "inductor")
