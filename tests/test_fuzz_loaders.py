"""Fuzzing the loaders: random bytes, bit flips, byte overwrites and truncations of real files.

Each loader gets a bounded, seeded set of mutations of a valid file in its real format: an IDX file (gzipped and
not), Fashion-MNIST's test split, a CIFAR batch and meta file in the official pickle format, and a checkpoint
written by ``save_checkpoint`` with a real model's state dict. Whatever the bytes, only the library's own error
type (:class:`LowRankCNNError`) may come out, or a successful load that still honours the loader's contract.
"""

import dataclasses
import gzip
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_cifar, make_fashion_mnist, write_idx

import lowrankcnn
from lowrankcnn.data import load_cifar, load_cifar_classes, load_fashion_mnist, read_idx
from lowrankcnn.errors import LowRankCNNError
from lowrankcnn.training import TrainConfig
from lowrankcnn.training.checkpoint import load_checkpoint, save_checkpoint

SEED = 20240610
COUNT = 150  # mutations per file: a few seconds for the whole module


def mutations(good: bytes, seed: int, count: int = COUNT) -> Iterator[tuple[str, bytes]]:
    """``count`` seeded variations of ``good``, each with a description that reproduces it."""
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            n = rng.randrange(0, 300)
            yield f"random {n} bytes", rng.randbytes(n)
        elif kind == 1:
            data = bytearray(good)
            bits = sorted(rng.sample(range(len(good) * 8), rng.randint(1, 8)))
            for bit in bits:
                data[bit // 8] ^= 1 << (bit % 8)
            yield f"bits {bits} flipped", bytes(data)
        elif kind == 2:
            cut = rng.randrange(len(good))
            yield f"truncated to {cut} bytes", good[:cut]
        else:
            data = bytearray(good)
            at, value = rng.randrange(len(good)), rng.randrange(256)
            data[at] = value
            yield f"byte {at} set to {value}", bytes(data)


def fuzz(path: Path, variants: Iterator[tuple[str, bytes]], load: Callable[[], object], check: Callable) -> None:
    """Write each variant to ``path`` and ``load()``: a LowRankCNNError or a result passing ``check``."""
    failures = []
    for what, data in variants:
        path.write_bytes(data)
        try:
            result = load()
        except LowRankCNNError as err:
            assert "\n" not in str(err), f"{path.name}, {what}: a multi-line message"
            continue
        except Exception as err:  # noqa: BLE001 - what the test is looking for
            failures.append(f"{path.name}, {what}: {type(err).__name__}: {str(err)[:200]}")
            continue
        check(result)
    assert not failures, f"{len(failures)} inputs raised a non-library error:\n" + "\n".join(failures[:10])


def _check_images(result: tuple[torch.Tensor, torch.Tensor], shape: tuple[int, ...]) -> None:
    x, y = result
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == shape and y.dtype == torch.int64 and len(x) == len(y)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fuzz_read_idx(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")), images)
    good = path.read_bytes()
    assert torch.equal(read_idx(path), torch.from_numpy(images))

    def check(x: torch.Tensor) -> None:
        assert x.dtype == torch.uint8 and x.ndim in (1, 3)

    fuzz(path, mutations(good, SEED), lambda: read_idx(path), check)
    if gz:  # mutate the IDX bytes themselves, then gzip them, to reach the header checks behind the gzip layer
        raw = gzip.decompress(good)
        variants = ((what, gzip.compress(data)) for what, data in mutations(raw, SEED + 1))
        fuzz(path, variants, lambda: read_idx(path), check)


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_fuzz_load_fashion_mnist(tmp_path, name):
    make_fashion_mnist(tmp_path, n_test=6, splits=("t10k",))
    path = tmp_path / name
    good = path.read_bytes()
    load = lambda: load_fashion_mnist(tmp_path, train=False)  # noqa: E731
    _check_images(load(), (1, 28, 28))
    fuzz(path, mutations(good, SEED + 2), load, lambda result: _check_images(result, (1, 28, 28)))


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_fuzz_load_cifar(tmp_path, numpy_module):
    arrays = make_cifar(tmp_path, "cifar10", n_test=4, splits=("test",), numpy_module=numpy_module)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = path.read_bytes()
    load = lambda: load_cifar("cifar10", tmp_path, train=False)  # noqa: E731
    assert torch.equal(load()[0], torch.from_numpy(arrays["test_x"]))

    def check(result: tuple[torch.Tensor, torch.Tensor]) -> None:
        _check_images(result, (3, 32, 32))
        x, y = result
        assert len(x) * 3072 <= len(path.read_bytes()) and all(0 <= v <= 9 for v in y.tolist())

    fuzz(path, mutations(good, SEED + 3), load, check)


def test_fuzz_load_cifar_classes(tmp_path):
    make_cifar(tmp_path, "cifar100", splits=("test",))
    path = tmp_path / "cifar-100-python" / "meta"
    good = path.read_bytes()

    def check(names: list[str]) -> None:
        assert len(names) == 100 and all(isinstance(n, str) for n in names)

    fuzz(path, mutations(good, SEED + 4), lambda: load_cifar_classes("cifar100", tmp_path), check)


def _real_checkpoint(path: Path) -> None:
    model = lowrankcnn.create_model("nin_c3_lr", width_mult=0.125, num_classes=10, in_chans=1)
    config = TrainConfig(model="nin_c3_lr", out=str(path.parent), width_mult=0.125, epochs=2)
    info = {"name": "fashion-mnist", "num_classes": 10, "in_chans": 1, "input_size": 28}
    info |= {"class_names": [f"c{i}" for i in range(10)], "mean": [0.286], "std": [0.353]}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = {"config": dataclasses.asdict(config), "data_info": info, "epoch": 1, "model": model.state_dict()}
    state |= {"optimizer": optimizer.state_dict(), "schedule": {"step": 3}, "rng": {"torch": torch.get_rng_state()}}
    state |= {"history": [{"epoch": 1, "test_acc": 0.5}], "best_acc": 0.5}
    save_checkpoint(path, state)


@pytest.mark.parametrize("for_resume", [False, True], ids=["eval", "resume"])
def test_fuzz_load_checkpoint(tmp_path, for_resume):
    path = tmp_path / "last.pt"
    _real_checkpoint(path)
    good = path.read_bytes()
    load = lambda: load_checkpoint(path, for_resume=for_resume)  # noqa: E731
    assert set(load()["model"]) == set(lowrankcnn.create_model("nin_c3_lr", width_mult=0.125).state_dict())

    def check(state: dict) -> None:
        assert isinstance(state, dict) and isinstance(state["model"], dict)

    fuzz(path, mutations(good, SEED + 5 + for_resume), load, check)
