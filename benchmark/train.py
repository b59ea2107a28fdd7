"""Training loops shared by the defenses: seeded, batched, with a progress bar.

A defense customises training through `loss_fn(model, inputs, labels) -> loss`, where `inputs` is a
batch as the task holds it (a float tensor for images, a list of strings for text), so adversarial
training, noise and masking are all a loss function over the same loop.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0}


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators. torch.manual_seed would also queue a seed for
    CUDA, recording a stack trace each time (~0.25 ms, a tenth of a small model's clean cell), even
    where there is no GPU: the CPU generator is seeded directly, CUDA's only where CUDA exists."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def deterministic_torch() -> dict:
    """Ask torch for deterministic kernels, so the same suite and seeds give the same outcomes on
    the same machine; returns the settings for the run manifest. `warn_only`: an op without a
    deterministic kernel (some CUDA scatter/index ops) warns instead of stopping the run, and the
    manifest says so. cuBLAS needs its workspace setting before its first call to be deterministic.
    The flag is set as torch.use_deterministic_algorithms sets it, less that function's import of
    torch._inductor (seconds, for the config of a compiler the suite never runs)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return {"torch.use_deterministic_algorithms": "True (warn_only: ops without a deterministic "
                                                  "kernel warn)",
            "cudnn.deterministic": True, "cudnn.benchmark": False,
            "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"]}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_logits(model: nn.Module, inputs) -> torch.Tensor:
    """Logits for a batch as the task holds it: a list of strings or an image array/tensor."""
    if isinstance(inputs, (list, tuple)):
        return model.classify(inputs)
    return model(torch.as_tensor(inputs, device=device_of(model)))


def cross_entropy_loss(model: nn.Module, inputs, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model_logits(model, inputs), labels)


def iterate_batches(xs, ys: np.ndarray, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(len(ys))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        inputs = xs[index] if isinstance(xs, np.ndarray) else [xs[i] for i in index]
        yield inputs, ys[index]


def fit(model: nn.Module, xs: np.ndarray | Sequence[str], ys: np.ndarray, *, epochs: int,
        batch_size: int, lr: float, weight_decay: float = 0.0, seed: int = 0,
        loss_fn: Callable = cross_entropy_loss, description: str = "train",
        on_epoch_start: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None, optimizer: str = "adam",
        momentum: float = 0.9, lr_milestones: Sequence[int] = (), lr_gamma: float = 0.1) -> nn.Module:
    """Adam (default) or SGD with momentum, every batch drawn from a generator seeded by `seed`
    (reproducible). `lr_milestones` multiplies the learning rate by `lr_gamma` after each listed
    epoch (the step schedules of the adversarial-training papers)."""
    set_seed(seed)
    rng = np.random.default_rng(seed)
    device = device_of(model)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'adam', 'sgd'")
    model.train()
    for epoch in tqdm(range(epochs), desc=description, leave=False):
        for group in opt.param_groups:
            group["lr"] = lr * lr_gamma ** sum(epoch >= m for m in lr_milestones)
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        for inputs, labels in iterate_batches(xs, ys, batch_size, rng):
            if isinstance(inputs, np.ndarray):
                inputs = torch.as_tensor(inputs, device=device)
            loss = loss_fn(model, inputs, torch.as_tensor(labels, device=device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
            model.train()
    model.eval()
    return model
