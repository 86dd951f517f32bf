"""A data-parallel rank that stops responding makes the job fail in bounded time, naming that rank."""

import os
import signal
import socket
import subprocess
import sys
import time

from conftest import requires_fashion_mnist

pytestmark = requires_fashion_mnist
RANK = """
import os, signal, sys
from lowrankcnn.cli import main
from lowrankcnn.training.trainer import Trainer
def stop(self, epoch, step):
    if os.environ["RANK"] == "1" and step == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # as `kill -STOP` would: alive, but never answers again
Trainer.on_step_end = stop
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stopped_rank_is_named_and_the_job_fails_within_the_timeout(tmp_path):
    args = ["train", "--model", "vgg11_gmp_lr", "--width-mult", "0.125", "--epochs", "1", "--train-subset", "512"]
    args += ["--test-subset", "64", "--batch-size", "64", "--threads", "1", "--dist-timeout", "5"]
    args += ["--out", str(tmp_path / "run")]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env["LOCAL_WORLD_SIZE"] = "2"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    start = time.monotonic()
    try:
        _, err = ranks[0].communicate(timeout=120)
        elapsed = time.monotonic() - start
    finally:
        for p in ranks:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
    assert ranks[0].returncode == 2, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("lowrankcnn train: error: rank 1 did not respond within 5 s at epoch 1 step 3"), err
    assert "--dist-timeout" in line and elapsed < 60
