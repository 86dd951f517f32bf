"""Are a checkpoint's batch-norm statistics those of its weights? Test accuracy on the first 2,000 Fashion-MNIST test
images with the running statistics (eval mode) and with each batch's own statistics (batch norm in train mode, batches
of 500). Equal accuracies: the statistics fit the weights, and any gap to the train accuracy is the weights' own.

    python results/projection_batch_norm/check_statistics.py RUN_DIR/last.pt
"""

import sys

import torch

from lowrankcnn.data import build_data
from lowrankcnn.training import load_trained_model

torch.set_num_threads(1)
model, _, _ = load_trained_model(sys.argv[1])
data = build_data("fashion-mnist", batch_size=500, splits=("test",), test_subset=2000)


def accuracy(batch_statistics: bool) -> float:
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train(batch_statistics)
    correct = seen = 0
    with torch.no_grad():
        for x, y in data.test:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    return correct / seen


print(f"running statistics (eval mode): {accuracy(False):.4f}")
print(f"each batch's own statistics:    {accuracy(True):.4f}")
