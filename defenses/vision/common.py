"""What the image defenses share: training options beyond the engine's defaults, the standard
CIFAR augmentation, the l-inf PGD used to craft training examples, best-checkpoint selection on a
validation split, and the randomized deployed model (batched prediction, EOT probabilities, a
differentiable surrogate).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UsageError
from benchmark.train import TRAIN_DEFAULTS, device_of

# Every image defense takes these on top of the engine's TRAIN_DEFAULTS: the papers train with
# SGD (momentum 0.9), step learning-rate schedules and crop + flip augmentation on CIFAR.
TRAIN_OPTIONS = {**TRAIN_DEFAULTS, "optimizer": "adam", "momentum": 0.9, "lr_milestones": [],
                 "lr_gamma": 0.1, "augment": False}


# Adversarial training's checkpoint: "last" (the final epoch) or "best" (Rice et al. 2020, as the
# CausalAdv tables report both): the epoch with the highest PGD accuracy, at the training attack's
# budget, on a validation split carved from the training data, never the test split.
ADVERSARIAL_OPTIONS = {"eps": 0.1, "steps": 10, "step_size": None, "checkpoint": "last",
                       "eps_warmup_epochs": 0}
CHECKPOINTS = ("last", "best")
# Options a suite spec leaves out at their default (benchmark/suite.py), so entries written before
# the option existed keep their cell ids: eps_warmup_epochs = 0 trains as before it existed.
OMITTED_AT_DEFAULT = {"eps_warmup_epochs": 0}
VALIDATION_FRACTION = 0.1


def fit_options(config: dict) -> dict:
    """The keyword arguments of benchmark.train.fit that a defense's config sets."""
    if config["optimizer"] not in ("adam", "sgd"):
        raise UsageError(f"optimizer must be 'adam' or 'sgd', got {config['optimizer']!r}")
    return {"epochs": config["epochs"], "batch_size": config["batch_size"], "lr": config["lr"],
            "weight_decay": config["weight_decay"], "optimizer": config["optimizer"],
            "momentum": config["momentum"], "lr_milestones": tuple(config["lr_milestones"]),
            "lr_gamma": config["lr_gamma"]}


def augment(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding plus random horizontal flip, per image (the CIFAR recipe)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    tops = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    lefts = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
    rows = (tops[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
    cols = (lefts[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch, channels, rows, cols]
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def check_budget(name: str, eps: float, steps: int, step_size: float | None) -> float:
    """Validate a training attack's budget; returns the step size (default 2.5 * eps / steps)."""
    if eps < 0 or steps < 1:
        raise UsageError(f"defense '{name}': need eps >= 0 and steps >= 1, got eps={eps}, "
                         f"steps={steps}")
    return step_size if step_size is not None else 2.5 * eps / steps


class AttackBudget:
    """The training attack's budget through training. With `eps_warmup_epochs` = W > 0, eps ramps
    linearly from 0 (epoch 0 trains on natural inputs) to the full eps at epoch W, the step size in
    proportion, as is usual at large budgets, where the full eps from the first batch can collapse
    the model to a few classes; W = 0 is the full budget throughout."""

    def __init__(self, name: str, config: dict):
        self.full_eps = config["eps"]
        self.full_step_size = check_budget(name, config["eps"], config["steps"], config["step_size"])
        self.warmup_epochs = config["eps_warmup_epochs"]
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise UsageError(f"defense '{name}': eps_warmup_epochs must be a non-negative integer, "
                             f"got {self.warmup_epochs!r}")
        self.fraction = 1.0 if self.warmup_epochs == 0 else 0.0

    def on_epoch_start(self, epoch: int) -> None:
        if self.warmup_epochs:
            self.fraction = min(1.0, epoch / self.warmup_epochs)

    @property
    def eps(self) -> float:
        return self.full_eps * self.fraction

    @property
    def step_size(self) -> float:
        return self.full_step_size * self.fraction


def pgd_linf(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
             step_size: float, steps: int, start: str = "uniform") -> torch.Tensor:
    """Maximise `loss_fn(x')` over the l-inf ball of radius eps around x, within [0, 1].

    `start` is "uniform" (Madry: uniform in the ball), "gaussian" (TRADES: 0.001 * N(0, 1)) or
    "none". The loss is summed over the batch so each example's step is its own sign gradient."""
    x = x.detach()
    if start == "uniform":
        adversarial = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "gaussian":
        adversarial = x + 0.001 * torch.randn_like(x)
    else:
        adversarial = x.clone()
    adversarial = adversarial.clamp(0, 1)
    for _ in range(steps):
        adversarial.requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(loss_fn(adversarial), adversarial)
        adversarial = adversarial.detach() + step_size * grad.sign()
        adversarial = torch.min(torch.max(adversarial, x - eps), x + eps).clamp(0, 1)
    return adversarial.detach()


def kl_to(logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "batchmean"):
    """KL(target || softmax(logits)), TRADES' robust term."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probs, reduction=reduction)


class eval_mode:
    """Context manager: the module in eval mode (BatchNorm statistics frozen) while crafting
    adversarial examples, restored afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return False


def as_tensor(xs, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(xs, dtype=np.float32), device=device)


class RandomizedImageModel:
    """Base of a deployed randomized image classifier.

    Subclasses define `sample_logits(x)`: the logits of one random draw of the defense on a
    tensor batch (differentiable: this is the `logits` surrogate white-box attacks see), and
    `predict`. `expected_probs` (the EOT view) averages softmax over draws; `probs` is that
    average over `prob_samples` draws."""

    randomized = True
    decision_draws = 1  # random draws the deployed decision averages (attacks may mirror it)

    def __init__(self, module: nn.Module, num_classes: int, batch_size: int = 256,
                 prob_samples: int = 8):
        self.module = module.eval()
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.prob_samples = prob_samples

    @property
    def device(self) -> torch.device:
        return device_of(self.module)

    def sample_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.sample_logits(x.to(self.device))

    @torch.no_grad()
    def expected_probs(self, xs: Sequence, samples: int) -> np.ndarray:
        chunks = []
        for start in range(0, len(xs), self.batch_size):
            x = as_tensor(xs[start:start + self.batch_size], self.device)
            total = torch.zeros(len(x), self.num_classes, device=self.device)
            for _ in range(samples):
                total += torch.softmax(self.sample_logits(x), dim=1)
            chunks.append((total / samples).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_classes))

    def probs(self, xs: Sequence) -> np.ndarray:
        return self.expected_probs(xs, self.prob_samples)


def train_defended(task, model_spec, config: dict, context, loss_fn, description: str,
                   module: nn.Module | None = None, on_epoch_start=None,
                   cross_entropy: "EpochCrossEntropy | None" = None) -> nn.Module:
    """Build the task's model (or take `module`), train it with `loss_fn` through the engine's
    `fit` (cached by the build's content hash) and return it in eval mode. A `cross_entropy` the
    loss function fills goes into the build's training record (its last epoch's mean)."""
    if module is None:
        module = context.build_model(model_spec, task)
    return context.trained(module, lambda m: _fit(m, task, config, context, loss_fn, description,
                                                  on_epoch_start, cross_entropy))


class EpochCrossEntropy:
    """The mean cross-entropy of the classifier's predictions on the inputs it is trained to
    classify (adversarial for Madry, natural for TRADES), over the current epoch. At the end of
    training it is the training record's `final_cross_entropy`: near ln C, a model that collapsed
    to a uniform guess (benchmark/sanity.py). Composite losses (a KL or style term) are not
    comparable with ln C, so each defense names its classification term."""

    def __init__(self):
        self.total = 0.0
        self.examples = 0

    def start_epoch(self) -> None:
        self.total, self.examples = 0.0, 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            self.total += float(F.cross_entropy(logits, labels, reduction="sum"))
        self.examples += len(labels)

    @property
    def mean(self) -> float:
        return self.total / self.examples


def _fit(module, task, config, context, loss_fn, description, on_epoch_start, cross_entropy):
    from benchmark.train import fit

    def wrapped(model, inputs, labels):
        if config["augment"]:
            inputs = augment(inputs)
        return loss_fn(model, inputs, labels)

    def epoch_start(epoch):
        if cross_entropy is not None:
            cross_entropy.start_epoch()
        if on_epoch_start is not None:
            on_epoch_start(epoch)

    xs, ys, best = task.train.xs, task.train.ys, None
    checkpoint = config.get("checkpoint", "last")
    if checkpoint not in CHECKPOINTS:
        raise UsageError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if checkpoint == "best":
        train_index, validation_index = validation_split(len(ys), context.seed)
        best = BestCheckpoint(module, xs[validation_index], ys[validation_index], config)
        xs, ys = xs[train_index], ys[train_index]
    fit(module, xs, ys, seed=context.seed, loss_fn=wrapped, description=description,
        on_epoch_start=epoch_start, on_epoch_end=best.update if best else None,
        **fit_options(config))
    if cross_entropy is not None and cross_entropy.examples:
        context.record_training({"final_cross_entropy": cross_entropy.mean,
                                 "epochs": config["epochs"], "num_classes": task.num_classes})
    if best is not None:
        best.restore()
    return module


def validation_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): a seeded VALIDATION_FRACTION of the training split."""
    order = np.random.default_rng([seed, 0x7A11D]).permutation(n)
    size = max(1, int(round(VALIDATION_FRACTION * n)))
    return np.sort(order[size:]), np.sort(order[:size])


class BestCheckpoint:
    """Keeps the weights of the epoch with the highest PGD accuracy on the validation split."""

    def __init__(self, module: nn.Module, xs: np.ndarray, ys: np.ndarray, config: dict):
        self.module = module
        self.x = torch.as_tensor(xs)
        self.y = torch.as_tensor(ys)
        self.eps, self.steps = config["eps"], config["steps"]
        self.step_size = check_budget("checkpoint = best", self.eps, self.steps, config["step_size"])
        self.history: list[float] = []
        self.best_state = None

    def robust_accuracy(self) -> float:
        """PGD accuracy on the validation split; its random starts are seeded apart from training's
        random stream, so every epoch is judged on the same starts and training is not disturbed."""
        device = device_of(self.module)
        correct = 0
        with eval_mode(self.module), torch.random.fork_rng():
            torch.manual_seed(0)
            for start in range(0, len(self.y), 256):
                x, y = self.x[start:start + 256].to(device), self.y[start:start + 256].to(device)
                adversarial = pgd_linf(
                    lambda a: F.cross_entropy(self.module(a), y, reduction="sum"), x, self.eps,
                    self.step_size, self.steps, start="uniform")
                with torch.no_grad():
                    correct += int((self.module(adversarial).argmax(1) == y).sum())
        return correct / len(self.y)

    def update(self, epoch: int) -> None:
        accuracy = self.robust_accuracy()
        if not self.history or accuracy > max(self.history):
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.history.append(accuracy)

    def restore(self) -> None:
        self.module.load_state_dict(self.best_state)
        self.module.eval()
