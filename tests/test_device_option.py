"""``--device`` on every command that runs a model: ``cpu`` works, ``cuda`` on this GPU-less machine is one line,
and the library's ``device=`` puts every tensor it creates on the model's device."""

import pytest
import torch

from lowrankcnn import create_model, deploy
from lowrankcnn.bench import BenchSettings, bench
from lowrankcnn.cli import main
from lowrankcnn.deployment import deploy_decision
from lowrankcnn.errors import ConfigError

BENCH = ["bench", "--model", "nin_c3_lr", "--width-mult", "0.125", "--input-size", "16", "--batch-size", "2"]
BENCH += ["--repeats", "2", "--warmup", "1"]


def commands(run: str, out: str) -> dict[str, list[str]]:
    return {
        "bench": BENCH,
        "eval": ["eval", "--checkpoint", run, "--test-subset", "64", "--workers", "0"],
        "export": ["export", "--checkpoint", run, "--format", "onnx", "--out", out, "--deploy", "auto"],
    }


@pytest.mark.parametrize("command", ["bench", "eval", "export"])
def test_device_cpu_runs_and_cuda_without_a_gpu_is_one_line(command, tiny_kim_run, tmp_path, capsys):
    args = commands(str(tiny_kim_run), str(tmp_path / "m.onnx"))[command]
    assert main([*args, "--device", "cpu"]) == 0
    capsys.readouterr()
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal below is for GPU-less machines")
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device 'cuda': CUDA is not available on this machine; use cpu" in err
    assert main([*args, "--device", "tpu"]) == 2
    assert "unknown --device 'tpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_library_device_arguments():
    model = create_model("nin_c3_lr", width_mult=0.125)
    deployed = deploy(model, input_shape=(1, 3, 16, 16), repeats=1, device="cpu")
    assert deploy_decision(deployed).device == "cpu"
    assert all(p.device.type == "cpu" for p in deployed.parameters())
    result = bench("nin_c3_lr", None, BenchSettings(input_size=16, batch_size=2, repeats=2, warmup=1, device="cpu"))
    assert result.device == "cpu" and result.to_dict()["device"] == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        BenchSettings(device="gpu0").validate()
