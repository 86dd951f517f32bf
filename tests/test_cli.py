import json

from lowrankcnn.cli import main


def test_profile_table(capsys):
    assert main(["profile", "nin_c3_lr", "--convention", "paper"]) == 0
    out = capsys.readouterr().out
    assert ["features.conv1", "CompositeConv2d", "3x1:96|1x3:96", "192x30x30", "1,920", "1,555,392"] in [
        line.split() for line in out.splitlines()
    ]
    assert out.rstrip().endswith("438,410  104,261,834")


def test_profile_json(capsys):
    args = [
        "profile",
        "vgg11_gmp_lr",
        "--input-size",
        "28",
        "--in-chans",
        "1",
        "--num-classes",
        "10",
        "--width-mult",
        "0.25",
        "--json",
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "input_size", "params", "macs", "layers"} <= data.keys()
    assert data["model"] == "vgg11_gmp_lr" and data["input_size"] == [1, 28, 28]
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])


def test_models_listing(capsys):
    assert main(["models", "vgg11_gmp*"]) == 0
    out = capsys.readouterr().out
    assert "vgg11_gmp_lr_lde" in out and "vgg11 " not in out
    assert out.count("exact") == 7
    assert main(["models", "googlenet_lr", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["published_macs"] == 1_178_239_528 and -0.14 < row["vs_published"] < -0.06


def test_errors_are_one_line(capsys):
    assert main(["profile", "vgg12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'vgg12'" in err
    assert main(["models", "no_such_model*"]) == 2
    assert "no model matches" in capsys.readouterr().err
    assert main(["profile", "nin", "--input-size", "2"]) == 2
    assert "too small" in capsys.readouterr().err
