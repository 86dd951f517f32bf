"""``align``: composite basis groups in multiples of a channel block (onnxruntime's NCHWc convolutions use blocks of
8 channels on AVX2, 16 on AVX-512), through ``split_channels``, ``create_lowrank_conv``, ``convert``,
``create_model`` and ``profile``."""

import pytest
import torch
from torch import nn

import lowrankcnn
from lowrankcnn.convert import convert
from lowrankcnn.errors import ConfigError
from lowrankcnn.layers import CompositeConv2d, create_lowrank_conv, split_channels
from lowrankcnn.layers.factory import channel_alignment
from lowrankcnn.models import ModelSpec

WEIGHTS = ([1, 1], [3, 3, 2], [3, 3, 1])


@pytest.mark.parametrize(
    ("total", "weights", "align", "expected"),
    [
        (64, [1, 1], 16, [32, 32]),  # already aligned: unchanged
        (64, [3, 3, 2], 1, [24, 24, 16]),
        (64, [3, 3, 2], 8, [24, 24, 16]),
        (64, [3, 3, 2], 16, [16, 32, 16]),  # 4 blocks of 16 by 3:3:2, the tie to the later group
        (1024, [3, 3, 2], 16, [384, 384, 256]),
        (112, [3, 3, 1], 16, [48, 48, 16]),  # the VGG lde basis at D = 64
        (96, [1, 1], 16, [48, 48]),
        (48, [1, 1], 16, [16, 32]),
        (16, [1, 1], 16, [8, 8]),  # one block of 16 for two groups: blocks of 8
        (24, [1, 1], 16, [8, 16]),  # not a multiple of 16: blocks of 8
        (20, [1, 1], 8, [8, 12]),  # blocks of 4
        (13, [1, 1], 8, [6, 7]),  # odd: the plain rule
        (32, [3, 3, 2], 16, [8, 16, 8]),
    ],
)
def test_split_channels_with_align(total, weights, align, expected):
    assert split_channels(total, weights, align=align) == expected


def test_split_channels_align_rule_holds_everywhere():
    for total in range(1, 260):
        for weights in WEIGHTS:
            for align in (1, 2, 4, 8, 16, 32):
                try:
                    counts = split_channels(total, weights, align=align)
                except ConfigError:  # only where the plain rule leaves a group empty as well
                    with pytest.raises(ConfigError, match="leave a group empty"):
                        split_channels(total, weights)
                    continue
                assert sum(counts) == total and min(counts) > 0
                # the groups share the largest block b <= align that divides the width and fills every group
                block = max(b for b in (1, 2, 4, 8, 16, 32) if b <= align and all(n % b == 0 for n in counts))
                assert total % block == 0
                assert counts == [block * n for n in split_channels(total // block, weights)]
                if total % align == 0 and all(n > 0 for n in _plain(total // align, weights)):
                    assert block == align  # aligned whenever the width allows it


def _plain(units: int, weights: list[int]) -> list[int]:
    try:
        return split_channels(units, weights)
    except ConfigError:
        return [0]


@pytest.mark.parametrize("align", [0, -8, 3, 12, 8.0, True, "16"])
def test_invalid_align_is_a_config_error(align):
    message = "align must be a power of two"
    with pytest.raises(ConfigError, match=message):
        split_channels(64, [1, 1], align=align)
    with pytest.raises(ConfigError, match=f"create_lowrank_conv: {message}"):
        create_lowrank_conv("lr", 16, 64, 3, align=align)
    with pytest.raises(ConfigError, match=message):
        create_lowrank_conv("sf", 16, 64, 3, align=align)  # checked even where it changes nothing
    with pytest.raises(ConfigError, match=f"convert: {message}"):
        convert(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3)), "lr", align=align)
    with pytest.raises(ConfigError, match=f"create_model\\('vgg11_gmp_lr'\\): {message}"):
        lowrankcnn.create_model("vgg11_gmp_lr", align=align)
    with pytest.raises(ConfigError, match=message), channel_alignment(align):
        pass
    with torch.device("meta"):
        result = lowrankcnn.profile(lowrankcnn.create_model("vgg11_gmp_lr", width_mult=0.25), 32)
    with pytest.raises(ConfigError, match=message):
        result.misaligned(align)


def test_factory_aligns_composite_methods_only():
    assert create_lowrank_conv("lr", 16, 48, 3, align=16).basis == [(3, 1, 16), (1, 3, 32)]
    wfull = create_lowrank_conv("lr_wfull", 16, 64, 3, align=16)
    assert wfull.basis == [(3, 1, 16), (1, 3, 32), (3, 3, 16)] and wfull.out_channels == 64
    lde = create_lowrank_conv("lr_wfull", 16, 32, 3, basis_width=112, parts=(("kx1", 3), ("1xk", 3), ("kxk", 1)))
    assert lde.basis == [(3, 1, 48), (1, 3, 48), (3, 3, 16)]
    for method in ("sf", "rank1", "consecutive", "svd", "bsconv", "dense"):  # no basis groups: nothing to align
        aligned, plain = create_lowrank_conv(method, 16, 24, 3, align=16), create_lowrank_conv(method, 16, 24, 3)
        assert _shapes(aligned) == _shapes(plain)
    with channel_alignment(16):  # the ambient alignment, which an explicit align overrides
        assert create_lowrank_conv("lr", 16, 48, 3).basis == [(3, 1, 16), (1, 3, 32)]
        assert create_lowrank_conv("lr", 16, 48, 3, align=1).basis == [(3, 1, 24), (1, 3, 24)]
    assert create_lowrank_conv("lr", 16, 48, 3).basis == [(3, 1, 24), (1, 3, 24)]


def test_the_ambient_alignment_is_restored_after_an_error():
    with pytest.raises(RuntimeError), channel_alignment(8):
        raise RuntimeError
    assert create_lowrank_conv("lr", 16, 48, 3).basis == [(3, 1, 24), (1, 3, 24)]


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _outside_groups(model: nn.Module, composite: set[str]) -> dict[str, tuple[int, ...]]:
    """The parameter shapes outside the basis groups of the ``composite`` layers."""
    return {k: s for k, s in _shapes(model).items() if not any(k.startswith(f"{n}.groups.") for n in composite)}


def _meta(name: str, width: float, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return lowrankcnn.create_model(name, width_mult=width, **kwargs)


SWEPT = [n for n in lowrankcnn.list_models() if not n.startswith(("resnet34", "resnet50", "resnet56"))]
"""Every registered model but the deeper ResNets, built by the same code as resnet18 / resnet20 (meta builds of those
take seconds: ``normal_`` on the meta device is slow)."""


@pytest.mark.parametrize("width", [0.25, 0.375])
def test_align_keeps_every_width_and_align_1_every_model(width):
    for name in SWEPT:
        default = _meta(name, width)
        composite = {n for n, m in default.named_modules() if isinstance(m, CompositeConv2d)}
        if not composite:  # nothing to align (create_lowrank_conv ignores align for these methods)
            continue
        aligned = _meta(name, width, align=16)
        assert _outside_groups(aligned, composite) == _outside_groups(default, composite), name
        for n in composite:
            old, new = default.get_submodule(n), aligned.get_submodule(n)
            assert (new.basis_channels, new.out_channels) == (old.basis_channels, old.out_channels), (name, n)
            assert [g[:2] for g in new.basis] == [g[:2] for g in old.basis], (name, n)
            assert (
                all(g[2] % 16 == 0 for g in new.basis)
                or old.basis_channels % 16
                or old.basis_channels < 16 * len(old.basis)
            ), (name, n, new.basis)  # aligned wherever the width allows it
    # align=1, explicit (even inside an ambient alignment), is the default build: the published structures
    with channel_alignment(16):
        explicit = _meta("vgg11_gmp_lr_join_wfull", width, align=1)
    assert _shapes(explicit) == _shapes(_meta("vgg11_gmp_lr_join_wfull", width))


def test_create_model_aligns_every_family_and_the_converted_resnets():
    vgg = _meta("vgg11_gmp_lr_join_wfull", 1.0, align=16)
    assert vgg.features.conv1.basis == [(3, 1, 16), (1, 3, 32), (3, 3, 16)]  # 24 | 24 | 16 at align 1
    assert _meta("vgg11_gmp_lr_join_wfull", 1.0).features.conv1.basis == [(3, 1, 24), (1, 3, 24), (3, 3, 16)]
    resnet = _meta("resnet20_lr", 0.75, align=8)  # built by convert inside the builder
    assert resnet.layer1[0].conv1.basis == [(3, 1, 4), (1, 3, 8)]  # 12 channels: blocks of 4
    assert resnet.layer2[0].conv1.basis == [(3, 1, 8), (1, 3, 16)]
    with channel_alignment(16):  # what a ModelSpec (which has no align) builds inside the block
        assert ModelSpec("vgg11_gmp_lr", width_mult=0.375).create("meta").features.conv2.basis == [
            (3, 1, 16),
            (1, 3, 32),
        ]


def test_convert_aligns_and_reports_it():
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 48, 3, padding=1))
    converted, report = convert(model, "lr", align=16, count=False)
    assert converted[2].basis == [(3, 1, 16), (1, 3, 32)] and report.align == 16
    assert report.table().startswith("convert: method lr, init composite, groups aligned to 16 channels, 1 conv")
    assert report.to_dict()["align"] == 16
    plain, report = convert(model, "lr", count=False)
    assert plain[2].basis == [(3, 1, 24), (1, 3, 24)] and report.align == 1
    assert "aligned" not in report.table()
    wfull, _ = convert(model, "lr_wfull", align=16, count=False)
    assert wfull[2].basis == [(3, 1, 16), (1, 3, 16), (3, 3, 16)]
    sf, report = convert(model, "sf", align=16, count=False)  # no basis groups: aligned to nothing
    assert report.align == 1 and _shapes(sf) == _shapes(convert(model, "sf", count=False)[0])


def test_profile_reports_group_widths_and_flags_misaligned_ones():
    plain = lowrankcnn.profile(_meta("vgg11_gmp_lr_join_wfull", 1.0), 224)
    assert plain.layers[0].widths == (24, 24, 16, 64)  # the basis groups, then the join
    assert [r.name for r in plain.misaligned(16)] == ["features.conv1"] and plain.misaligned(8) == []
    table = plain.table(align=16).splitlines()
    assert table[1].split()[-2:] == ["align", "16"] and table[3].split()[-1] == "no" and table[4].split()[-1] == "ok"
    assert lowrankcnn.profile(_meta("vgg11_gmp_lr_join_wfull", 1.0, align=16), 224).misaligned(16) == []
    assert plain.table() == lowrankcnn.profile(_meta("vgg11_gmp_lr_join_wfull", 1.0), 224).table()  # no column
    small = lowrankcnn.profile(_meta("vgg11_gmp_lr", 0.25, align=16), 32)
    assert [r.name for r in small.misaligned(16)] == ["features.conv1"]  # 16 wide: two groups of 8 at most
    assert small.layers[0].widths == (8, 8) and small.layers[-1].widths == ()  # a linear layer has none
    deployed = lowrankcnn.deploy(
        lowrankcnn.create_model("vgg11_gmp_lr", 10, 1, 0.25).eval(), "factorized", input_shape=(1, 1, 8, 8)
    )
    rows = lowrankcnn.profile(deployed, 8).misaligned(16)  # deployed: every group is a conv of its own
    assert [r.widths for r in rows] == [(8,), (8,)]
