#!/usr/bin/env python3
"""Train a deep, highly sparse MLP on MNIST with PyTorch and save it in spdnn's format.

The network (issue 17, point 7; the shape of SNICIT's "beyond SDGC" networks):

    784 -> W (dense Linear) -> DEPTH hidden sparse W x W Linear layers -> 10 (dense Linear)

every Linear but the last followed by a ReLU (plain, or capped with ``--cap C``:
``Hardtanh(0, C)``), the last one linear (its outputs are the logits; the prediction is
their argmax). Each hidden layer keeps a fixed random mask with the same number of
inputs per output neuron, ``round((1 - SPARSITY) * W)``, applied through
``torch.nn.utils.prune.custom_from_mask`` (so the saved model is a pruned
``nn.Sequential``, read by :func:`spdnn.models.from_torch`); weights start He-normal
for that fan-in, biases at 0. Inputs are pixel / 255, flattened row by row; training
uses the first 50,000 of the MNIST training images shipped in spdnn (src/spdnn/data)
and the accuracy is measured on the other 10,000. Adam with a cosine learning rate.

After training, the model is converted in float64 and checked: spdnn's reference engine
must give the same predictions as PyTorch's float64 forward pass on the held-out
images. The ``.spdnn`` file records the options, both accuracies and the timing.

Examples::

    # the small model shipped in the package (CPU, about a minute)
    python3 benchmarks/train_mnist.py --width 64 --depth 4 --epochs 15 \\
        --out src/spdnn/data/mnist-sparse-mlp.spdnn
    # the full-size network (a GPU)
    python3 benchmarks/train_mnist.py --device cuda --width 1024 --depth 24 --sparsity 0.95 \\
        --epochs 30 --out mnist-1024x24.spdnn
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TRAIN = 50_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=1024, help="hidden width W [1024]")
    p.add_argument("--depth", type=int, default=24, help="hidden sparse W x W layers [24]")
    p.add_argument("--sparsity", type=float, default=0.95, help="fraction of zeros in each hidden layer [0.95]")
    p.add_argument("--cap", type=float, default=None, help="ReLU cap (Hardtanh(0, CAP)) [none: plain ReLU]")
    p.add_argument("--epochs", type=int, default=20, help="passes over the 50,000 training images [20]")
    p.add_argument("--batch", type=int, default=128, help="batch size [128]")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam [1e-3]")
    p.add_argument("--seed", type=int, default=0, help="seed of masks, weights and shuffling [0]")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ... [auto]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch [torch's default]")
    p.add_argument("--out", type=Path, required=True, help="the .spdnn file to write")
    p.add_argument("--torch-out", type=Path, default=None, help="also save the state dict (.pt) here")
    args = p.parse_args(argv)
    if not 0 <= args.sparsity < 1:
        p.error("--sparsity must be in [0, 1)")
    if args.cap is not None and not args.cap > 0:
        p.error("--cap must be positive")
    return args


def build(args, torch):
    """The pruned nn.Sequential (masks from the seed)."""
    from torch import nn
    from torch.nn.utils import prune

    gen = torch.Generator().manual_seed(args.seed)
    fan_in = max(1, round((1 - args.sparsity) * args.width))
    layers = []
    widths = [784] + [args.width] * (args.depth + 1) + [10]
    for k in range(len(widths) - 1):
        n_in, n_out = widths[k], widths[k + 1]
        lin = nn.Linear(n_in, n_out)
        hidden = 0 < k < len(widths) - 2
        inputs = fan_in if hidden else n_in
        with torch.no_grad():
            lin.weight.normal_(0.0, math.sqrt(2.0 / inputs), generator=gen)
            lin.bias.zero_()
        if hidden:
            # each output neuron (a row of the torch weight) reads `fan_in` random inputs
            order = torch.rand(n_out, n_in, generator=gen).argsort(dim=1)[:, :fan_in]
            mask = torch.zeros(n_out, n_in)
            mask.scatter_(1, order, 1.0)
            prune.custom_from_mask(lin, "weight", mask)
        layers.append(lin)
        if k < len(widths) - 2:
            layers.append(nn.ReLU() if args.cap is None else nn.Hardtanh(0.0, args.cap))
    return nn.Sequential(*layers)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import spdnn
    from spdnn.generate.mnist import load_mnist, load_mnist_labels
    from spdnn.models import from_torch, save_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    images = load_mnist().reshape(-1, 784).astype(np.float32) / 255.0
    labels = load_mnist_labels().astype(np.int64)
    x_train = torch.from_numpy(images[:TRAIN]).to(device)
    y_train = torch.from_numpy(labels[:TRAIN]).to(device)
    x_test = torch.from_numpy(images[TRAIN:]).to(device)
    y_test = torch.from_numpy(labels[TRAIN:]).to(device)

    model = build(args, torch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * math.ceil(TRAIN / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    print(f"training {args.width} x {args.depth} at {args.sparsity:.0%} zeros on {device} "
          f"({'ReLU' if args.cap is None else f'ReLU capped at {args.cap:g}'}), {args.epochs} epochs", flush=True)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(TRAIN, generator=gen).to(device)
        total = 0.0
        for b in range(0, TRAIN, args.batch):
            idx = order[b:b + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        model.eval()
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        print(f"epoch {epoch + 1:3d}: loss {total / TRAIN:.4f}, held-out accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    seconds = time.perf_counter() - t0

    # float64 on the host: the model spdnn saves, and PyTorch's forward pass of it
    model = model.to("cpu", torch.float64).eval()
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(images[TRAIN:].astype(np.float64))).argmax(1).numpy()
    torch_acc = float((torch_pred == labels[TRAIN:]).mean())
    net = from_torch(model)
    held_out = spdnn.network.as_features(images[TRAIN:].astype(np.float64))
    result = spdnn.infer(net, held_out, engine="reference", precision="fp64", outputs="predictions")
    spdnn_acc = float(result.accuracy(labels[TRAIN:]))
    same = bool(np.array_equal(result.predictions, torch_pred))
    meta = {
        "trained_by": "benchmarks/train_mnist.py", "options": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in vars(args).items()},
        "data": "MNIST training images: rows 0..49,999 for training, 50,000..59,999 held out (pixel / 255)",
        "activation": "ReLU" if args.cap is None else f"ReLU capped at {args.cap:g} (Hardtanh(0, {args.cap:g}))",
        "held_out_accuracy": spdnn_acc, "held_out_accuracy_torch_fp64": torch_acc,
        "predictions_equal_torch_fp64": same, "train_seconds": round(seconds, 1), "device": str(device),
        "torch": torch.__version__, "spdnn": spdnn.__version__,
    }
    save_model(net, args.out, metadata=meta)
    if args.torch_out is not None:
        torch.save(model.state_dict(), args.torch_out)
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size, "network": net.describe(),
                      "edges": net.edges, **{k: meta[k] for k in ("held_out_accuracy", "held_out_accuracy_torch_fp64",
                                                                  "predictions_equal_torch_fp64", "train_seconds")}},
                     indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
