"""Train a small CNN on scikit-learn's bundled digits (8x8 grey images, 10 classes; no
download) and export what the digits ModelDeployment needs:

    digits.pt         TorchScript (input "input" float32 [-1, 1, 8, 8] -> "logits" float32 [-1, 10])
    digits.onnx       the same model as ONNX (dynamic batch), for specs that start from ONNX
    calibration.npz   256 training images ("input") for static int8 calibration
    validation.npz    360 held-out images ("input") with their "labels", for the quality gate

Deterministic: fixed seeds, one thread, deterministic algorithms; the same files every run on
the same library versions. Runs in a few seconds on a CPU.

    python examples/digits/train.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

log = logging.getLogger("digits")
SEED = 0


class DigitsCNN(nn.Module):
    """conv(1->16) -> conv(16->32) -> fc(2048->64) -> fc(64->10); ~137k parameters, most in fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=360, random_state=SEED, stratify=y)
    return x_train, x_val, y_train, y_val


def train(x: np.ndarray, y: np.ndarray, epochs: int) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        if (epoch + 1) % 5 == 0:
            log.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(xt))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="where to write the files (default: next to this script)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_val, y_train, y_val = load_data()
    model = train(x_train, y_train, args.epochs)
    with torch.inference_mode():
        acc = float((model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean())
    log.info("validation top-1: %.4f on %d images", acc, len(y_val))

    example = torch.from_numpy(x_val[:2])
    scripted = torch.jit.trace(model, example)
    scripted.save(str(out / "digits.pt"))
    torch.onnx.export(
        model, (example,), str(out / "digits.onnx"), dynamo=False, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
    )
    rng = np.random.default_rng(SEED)
    calib = x_train[rng.choice(len(x_train), size=256, replace=False)]
    np.savez(out / "calibration.npz", input=calib)
    np.savez(out / "validation.npz", input=x_val, labels=y_val)
    for name in ("digits.pt", "digits.onnx", "calibration.npz", "validation.npz"):
        log.info("wrote %s (%d bytes)", out / name, (out / name).stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
