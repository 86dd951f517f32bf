"""Issue 10, eval / rank / plot / profile / models / bench: only the split that is read is built, the class names
must be training's, a 1000-class confusion matrix is quick and small, plot names a missing column, and every
hostile flag value is one line (never a traceback)."""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lowrankcnn.cli import main
from lowrankcnn.evaluate import most_confused
from lowrankcnn.training import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def run_dir(kim_run_copy) -> Path:
    """A one-epoch kim_rank1_cifar10 run (width 0.25) on a Fashion-MNIST subset padded to 32."""
    return kim_run_copy


def image_folder(root: Path, classes: list[str], per_class: int = 2, splits: tuple[str, ...] = ("val",)) -> Path:
    """``root/<split>/<class>/<i>.png``: random 28x28 grayscale images."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def renamed_checkpoint(run_dir: Path, dest: Path, class_names: list[str]) -> Path:
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["data_info"]["class_names"] = class_names
    save_checkpoint(dest, state)
    return dest


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """``main(args)`` with argparse's exits caught: ``(status, stdout, stderr)``."""
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line(status: int, err: str, *needles: str) -> None:
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, (status, err)
    for needle in needles:
        assert needle in err, err


def test_eval_refuses_other_class_names_with_the_difference(run_dir, tmp_path, capsys):
    folder = image_folder(tmp_path / "folder", NAMES)
    args = ["eval", "--checkpoint", str(run_dir), "--data", "imagefolder", "--data-dir", str(folder)]
    status, _, err = run(args, capsys)
    assert_one_line(status, err, "classes of --data-dir", "lacks 'T-shirt/top'", "has 'c0'", "--ignore-class-names")
    status, out, _ = run([*args, "--ignore-class-names"], capsys)
    assert status == 0 and "20 images" in out


def test_eval_refuses_the_same_names_in_another_order(run_dir, tmp_path, capsys):
    checkpoint = renamed_checkpoint(run_dir, tmp_path / "renamed.pt", [*NAMES[1:], NAMES[0]])
    folder = image_folder(tmp_path / "folder", NAMES)
    args = ["eval", "--checkpoint", str(checkpoint), "--data", "imagefolder", "--data-dir", str(folder)]
    status, _, err = run(args, capsys)
    assert_one_line(status, err, "another order", "label 0: 'c1' vs 'c0'")


def test_eval_and_rank_need_only_the_split_they_read(run_dir, tmp_path, capsys):
    checkpoint = renamed_checkpoint(run_dir, tmp_path / "renamed.pt", NAMES)
    folder = image_folder(tmp_path / "folder", NAMES, per_class=1)  # val/ only, 10 images: less than a batch
    data = ["--checkpoint", str(checkpoint), "--data", "imagefolder", "--data-dir", str(folder)]
    status, out, err = run(["eval", *data], capsys)
    assert status == 0, err
    assert "imagefolder test, 10 images" in out
    status, out, err = run(["rank", *data, "--images", "4"], capsys)
    assert status == 0 and "output ranks on 4 imagefolder test images" in out, err


def test_confusion_of_1000_classes_is_quick_and_small(tmp_path):
    # In a child process with bounded memory and time: the old code drew a ~20 GB figure.
    script = f"""
import time, torch
from lowrankcnn.plot import plot_confusion
n = 1000
g = torch.Generator().manual_seed(0)
matrix = torch.randint(0, 3, (n, n), generator=g) + 40 * torch.eye(n, dtype=torch.int64)
start = time.perf_counter()
plot_confusion(matrix, [f"class {{i}}" for i in range(n)], {str(tmp_path / "c.png")!r}, "1000 classes")
print(time.perf_counter() - start)
"""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=limit, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) < 30
    assert (tmp_path / "c.png").stat().st_size < 4 * 2**20
    with Image.open(tmp_path / "c.png") as image:
        assert max(image.size) <= 1500


def test_most_confused_pairs():
    matrix = torch.tensor([[5, 3, 0], [1, 6, 0], [0, 7, 2]])
    pairs = most_confused(matrix, ["a", "b", "c"], k=2)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("c", "b", 7), ("a", "b", 3)]
    assert pairs[0].rate == pytest.approx(7 / 9)


def test_eval_confusion_prints_the_most_confused_and_checks_the_format_first(run_dir, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(run_dir), "--test-subset", "40"]
    status, out, err = run([*base, "--confusion", str(tmp_path / "c.png")], capsys)
    assert status == 0, err
    assert "most confused" in out and (tmp_path / "c.png").is_file()
    start = time.perf_counter()
    status, _, err = run([*base, "--confusion", str(tmp_path / "c.xyz")], capsys)
    assert_one_line(status, err, "--confusion", ".xyz")
    status, _, err = run([*base, "--confusion", str(tmp_path)], capsys)
    assert_one_line(status, err, "it is a directory")
    os.mkfifo(tmp_path / "pipe")  # like /dev/null: must not be replaced by a regular file
    status, _, err = run([*base, "--confusion", str(tmp_path / "pipe")], capsys)
    assert_one_line(status, err, "not a regular file")
    assert (tmp_path / "pipe").is_fifo()
    assert time.perf_counter() - start < 5  # refused before loading and evaluating


def write_metrics(run: Path, rows: list) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


ROW = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.5, "test_acc": 0.4}


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{k: v for k, v in ROW.items() if k != "test_acc"}], "no 'test_acc' column"),
        ([], "has no epochs"),
        ([ROW, {**ROW, "epoch": 2, "train_loss": "x"}], "metrics.jsonl:2: 'train_loss' is 'x'"),
        ([[1, 2]], "is not a JSON object"),
    ],
)
def test_plot_names_the_file_and_what_is_wrong(tmp_path, capsys, rows, needle):
    run_ = write_metrics(tmp_path / "run", rows)
    status, _, err = run(["plot", str(run_), "--out", str(tmp_path / "c.png")], capsys)
    assert_one_line(status, err, str(run_ / "metrics.jsonl"), needle)
    assert not (tmp_path / "c.png").exists()


def test_plot_hostile_paths(tmp_path, capsys):
    good = write_metrics(tmp_path / "good", [ROW, {**ROW, "epoch": 2}])
    (tmp_path / "file").write_text("x")
    (tmp_path / "bad" / "metrics.jsonl").parent.mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    for runs, out in (
        ([str(tmp_path / "missing")], "c.png"),
        ([str(tmp_path / "file")], "c.png"),
        ([str(tmp_path / "bad")], "c.png"),
        ([str(good)], "c.notaformat"),
        ([str(good)], str(tmp_path)),
    ):
        status, _, err = run(["plot", *runs, "--out", str(tmp_path / out)], capsys)
        assert_one_line(status, err)
    status, out, _ = run(["plot", str(good), "--out", str(tmp_path / "c.svg")], capsys)
    assert status == 0 and (tmp_path / "c.svg").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--batch-size", "0"],
        ["eval", "--batch-size", "-1"],
        ["eval", "--batch-size", "nan"],
        ["eval", "--test-subset", "0"],
        ["eval", "--workers", "-1"],
        ["eval", "--workers", "1000000"],
        ["eval", "--data", "cifar10", "--data-dir", "/nonexistent"],
        ["eval", "--data-dir", "/nonexistent"],
        ["eval", "--data", "imagefolder", "--data-dir", "/nonexistent"],
        ["rank", "--images", "0"],
        ["rank", "--images", "100000000"],
    ],
)
def test_hostile_eval_and_rank_flags_are_one_line(run_dir, capsys, args):
    status, _, err = run([*args[:1], "--checkpoint", str(run_dir), *args[1:]], capsys)
    assert_one_line(status, err)


def test_hostile_checkpoints_for_eval_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    for checkpoint in ("/nonexistent.pt", str(tmp_path), str(tmp_path / "junk.pt")):
        status, _, err = run(["eval", "--checkpoint", checkpoint], capsys)
        assert_one_line(status, err)


@pytest.mark.parametrize(
    "args",
    [
        ["profile", "nin", "--width-mult", "1e9"],
        ["profile", "nin", "--width-mult", "nan"],
        ["profile", "nin", "--width-mult", "inf"],
        ["profile", "nin", "--width-mult", "-1"],
        ["profile", "nin", "--width-mult", "0"],
        ["profile", "nin", "--input-size", "0"],
        ["profile", "nin", "--input-size", "-5"],
        ["profile", "nin", "--input-size", "100000"],
        ["profile", "nin", "--input-size", "3"],
        ["profile", "nin", "--num-classes", "0"],
        ["profile", "nin", "--in-chans", "0"],
        ["profile", "resnet9000"],
        ["models", "--width-mult", "1e9"],
        ["models", "--input-size", "-1"],
        ["models", "no-such-model*"],
        ["bench", "--model", "nin", "--batch-size", "0"],
        ["bench", "--model", "nin", "--batch-size", "100000000"],
        ["bench", "--model", "nin", "--repeats", "0"],
        ["bench", "--model", "nin", "--repeats", "-3"],
        ["bench", "--model", "nin", "--warmup", "-1"],
        ["bench", "--model", "nin", "--input-size", "0"],
        ["bench", "--model", "nin", "--input-size", "100000"],
        ["bench", "--model", "nin", "--width-mult", "1e9"],
        ["bench", "--model", "nin", "--width-mult", "nan"],
        ["bench", "--model", "nin", "--num-classes", "0"],
        ["bench", "--model", "nin", "--in-chans", "-1"],
        ["bench", "--model", "nin", "--num-classes", "1000000000000"],
        ["bench", "--model", "nin", "--in-chans", "1000000000000"],
        ["bench", "--model", "nin", "--baseline", "nope"],
        ["bench", "--model", "nope"],
        ["bench", "--model", "nin", "--train", "--deploy", "dense"],
    ],
)
def test_hostile_model_flags_are_one_line(capsys, args):
    start = time.perf_counter()
    status, _, err = run(args, capsys)
    assert_one_line(status, err)
    assert time.perf_counter() - start < 30  # refused up front, not after allocating
