"""Model keywords: parsed from the command line as a user means them, checked against the model before anything runs."""

import math

import pytest
import torch

from lowrankcnn import create_model, model_info
from lowrankcnn.cli import main
from lowrankcnn.cli.common import parse_model_kwarg
from lowrankcnn.errors import ConfigError
from lowrankcnn.models import validate_model_kwargs


@pytest.mark.parametrize(
    "text, value",
    [
        ("shared_spatial=false", False),
        ("bn=YES", True),
        ("bn=no", False),
        ("aux_logits=True", True),
        ("dropout=0.25", 0.25),
        ("input_size=32", 32),
        ("rank1_scheme=projected", "projected"),
        ("dropout=0,5", (0, 5)),  # parsed, then refused by the model's schema below
        ("fc_width=none", None),
    ],
)
def test_cli_values_parse_as_meant(text, value):
    key, parsed = parse_model_kwarg(text)
    assert key == text.split("=")[0] and parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shared_spatial": "false"}, "keyword shared_spatial must be bool, got 'false'"),
        ({"bn": 1}, "keyword bn must be bool, got 1"),
        ({"dropout": (0, 5)}, r"keyword dropout must be float, got \(0, 5\)"),
        ({"dropout": 1.5}, r"keyword dropout must be in \[0, 1\], got 1.5"),
        ({"dropout": math.nan}, "keyword dropout must be in"),
        ({"rank1_scheme": "factor"}, "keyword rank1_scheme must be one of 'factors', 'projected'"),
        ({"num_classes": 3}, "num_classes is not a model keyword but an argument of create_model: the data set sets"),
        ({"width_mult": 2.0}, "width_mult is not a model keyword but an argument of create_model: set it with"),
        ({"input_size": 3}, r"keyword input_size must be in \[8, 4096\], got 3"),
        ({"input_size": 0}, r"keyword input_size must be in \[8, 4096\], got 0"),
        ({"_kind": "dense"}, "does not accept the keyword _kind=...; it accepts: bn, dropout, input_size"),
        ({"colour": 2}, "does not accept the keyword colour"),
    ],
)
def test_wrong_keywords_are_refused_before_building(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        validate_model_kwargs("kim_rank1_cifar10", kwargs)
    if not {"num_classes", "width_mult"} & kwargs.keys():  # those two are create_model's own arguments
        with pytest.raises(ConfigError, match=message):
            create_model("kim_rank1_cifar10", **kwargs)


def test_non_positive_fc_width_is_refused():
    """fc_width=0 used to build a classifier that could only ever output its bias (training stuck at chance)."""
    for width in (0, -5):
        with pytest.raises(ConfigError, match=f"keyword fc_width must be at least 1, got {width}"):
            create_model("vgg11_gmp_lr", fc_width=width)


@pytest.mark.parametrize("kwargs", [{"fc_width": 10**6}, {"num_classes": 10**8}])
def test_any_model_too_big_for_memory_is_refused_before_allocating(kwargs):
    """Not just wide ones: a huge classifier used to be a DefaultCPUAllocator traceback after minutes of paging."""
    with pytest.raises(ConfigError, match="GiB, more than half of this machine's memory"):
        create_model("vgg11_gmp_lr", **kwargs)


def test_private_builder_defaults_do_not_leak():
    """``_kind`` used to turn a rank-1 model into a dense one without a word."""
    with pytest.raises(ConfigError):
        create_model("kim_rank1_cifar10", _kind="dense", width_mult=0.25)


@pytest.mark.parametrize("width", [math.inf, math.nan, 0, -1, 100, 1e9, True])
def test_impossible_widths_are_one_error(width):
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("vgg11_gmp", width_mult=width)


def test_a_width_whose_weights_do_not_fit_in_memory_is_refused_before_allocating():
    with pytest.raises(ConfigError, match=r"the weights alone need \d+\.\d GiB"):
        create_model("vgg11", width_mult=60)


def test_googlenet_keeps_its_own_init_and_direct_construction_matches():
    assert model_info("googlenet").init_mode == "fan_in" and model_info("vgg11_gmp").init_mode == "fan_out"
    torch.manual_seed(0)
    logits = create_model("googlenet", num_classes=10, in_chans=1, width_mult=0.25).eval()(torch.randn(4, 1, 32, 32))
    assert logits.std() < 5  # fan-out init gave ~30


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model-kwargs", "dropout=0,5"], "keyword dropout must be float, got (0, 5)"),
        (
            ["--model-kwargs", "num_classes=3"],
            "num_classes is not a model keyword but an argument of create_model: the data set sets it",
        ),
        (["--model-kwargs", "width_mult=2"], "set it with --width-mult"),
        (["--bn", "--model-kwargs", "shared_spatial=maybe"], "keyword shared_spatial must be bool, got 'maybe'"),
    ],
)
def test_cli_refuses_bad_keywords_in_one_line_before_creating_the_run(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", "--model", "kim_rank1_cifar10", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_profile_with_an_absurd_width_is_one_line(capsys):
    assert main(["profile", "vgg11_gmp", "--width-mult", "1e9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--width-mult must be a number in (0, 64]" in err
