"""CiiV (Tang, Tao and Zhang, "Adversarial Visual Robustness by Causal Intervention", an ICLR 2022
submission, arXiv 2106.09534): causal intervention by instrumental variable.

A retinotopic sampling layer in front of the network, after the reference implementation
(KaihuaTang/CiiV-Adversarial-Robustness.pytorch, ResNet_CiiV / train_ciiv):

- Exposure: each of N samples (N = 3) binarises the (normalised) image at a random threshold,
  relu(x + eps) / (relu(x + eps) + 1e-5) with eps ~ U(-omega, omega) per pixel (omega = 0.9): a
  pixel fires with probability clip((x + omega) / (2 omega), 0, 1). Its gradient is ~0 except
  right at the threshold, which is why BPDA is needed to attack it.
- Retinotopic masks: one of 9 centres (a 3 x 3 grid, at 5/32, 16/32 and 27/32 of the side) per
  loop; each sample keeps pixel p with probability min(1, 0.1 + m(p)), m = ((d_max - d + 10)^0.3)
  normalised to max 1, d the distance to the centre (in 32-pixel units, so every image size gets
  CIFAR's masks).
- A loop averages its N masked samples, runs the network, and divides the logits by the mean
  mask coverage z; the prediction averages the 9 loops.
- Training: mean over loops of CE(logits_i, y) + w_reg * mean over loops of the CiiV
  regulariser smooth-L1(f_i * mean_{j != i} z_j, mean_{j != i} f_j * z_i) (summed over feature
  dimensions, averaged over the batch); w_reg starts at 0.1 and is multiplied by 10 after each
  epoch in `reg_milestones` (the trade-off schedule).

The deployed rule is the reference's inference: one random draw of the 9-loop average. `logits`
is one such draw with the reference's own (near-zero) gradients; `bpda_logits` keeps the forward
and differentiates the exposure step as its expectation (BPDA, Athalye et al. 2018).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UsageError
from benchmark.registry import register_defense
from defenses.vision.common import TRAIN_OPTIONS, RandomizedImageModel, as_tensor, train_defended
from defenses.vision.mixup import mix

REFERENCE_SIDE = 32  # the reference's mask geometry is defined on 32 x 32 images


class CiiVNet(nn.Module):
    """The retinotopic sampling layer wrapped around an image model with features(x) and head."""

    def __init__(self, base: nn.Module, mean, std, num_samples: int = 3, omega: float = 0.9,
                 centres=(5 / 32, 16 / 32, 27 / 32), mask_alpha: float = 10.0):
        super().__init__()
        self.base = base
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.num_samples = num_samples
        self.omega = omega
        self.centres = tuple(centres)
        self.mask_alpha = mask_alpha

    def masks(self, loops: int, height: int, width: int, device) -> torch.Tensor:
        """(loops, N, H, W) boolean retinotopic masks; loop i uses grid centre i mod 9."""
        rows = torch.arange(height, device=device, dtype=torch.float32)[:, None]
        cols = torch.arange(width, device=device, dtype=torch.float32)[None, :]
        out = []
        for loop in range(loops):
            index = loop % 9
            centre_x = self.centres[index // 3] * width
            centre_y = self.centres[index % 3] * height
            distance = ((cols - centre_x) ** 2 + (rows - centre_y) ** 2).sqrt()
            distance = distance * REFERENCE_SIDE / max(height, width)
            density = (distance.max() - distance + self.mask_alpha) ** 0.3
            density = density / density.max()
            draws = torch.rand(self.num_samples, height, width, device=device)
            out.append((density[None] + draws) > 0.9)
        return torch.stack(out)

    def exposure(self, x: torch.Tensor, loops: int, bpda: bool) -> torch.Tensor:
        """(loops, N, B, C, H, W) binary exposure samples of the normalised batch x."""
        noise = torch.empty((loops, self.num_samples, *x.shape), device=x.device).uniform_(-1, 1)
        shifted = torch.relu(x + noise * self.omega)
        hard = shifted / (shifted + 1e-5)
        if not bpda:
            return hard
        expected = ((x + self.omega) / (2 * self.omega)).clamp(0, 1)
        return expected + (hard - expected).detach()

    def forward(self, x: torch.Tensor, loops: int = 9, bpda: bool = False):
        """(final logits, coverages z (loops,), per-loop features, per-loop logits)."""
        batch, _, height, width = x.shape
        x = (x - self.mean) / self.std
        masks = self.masks(loops, height, width, x.device)                   # L x N x H x W
        samples = self.exposure(x, loops, bpda) * masks[:, :, None, None].to(x.dtype)
        inputs = samples.mean(1)                                              # L x B x C x H x W
        coverage = masks.to(x.dtype).mean(1).mean((1, 2))                     # L
        features = self.base.features(inputs.reshape(loops * batch, *x.shape[1:]))
        logits = self.base.head(features)
        features = features.view(loops, batch, -1)
        logits = logits.view(loops, batch, -1)
        final = (logits / (coverage[:, None, None] + 1e-9)).mean(0)
        return final, coverage, features, logits


def ciiv_regulariser(features: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Mean over loops i of smooth-L1(f_i * mean_{j!=i} z_j, mean_{j!=i} f_j * z_i), each summed
    over feature dimensions and averaged over the batch."""
    loops = features.shape[0]
    others_features = (features.sum(0, keepdim=True) - features) / (loops - 1)
    others_coverage = (coverage.sum() - coverage) / (loops - 1)
    left = features * others_coverage[:, None, None]
    right = others_features * coverage[:, None, None]
    return F.smooth_l1_loss(left, right, reduction="none").sum(2).mean(1).mean()


class CiiVLoss:
    """The CiiV training objective with its trade-off schedule (optionally on mixup batches)."""

    def __init__(self, config: dict, mixup_alpha: float | None = None):
        self.config = config
        self.mixup_alpha = mixup_alpha
        self.w_reg = config["w_reg"]

    def on_epoch_start(self, epoch: int) -> None:
        # The reference multiplies w_reg after finishing each milestone epoch.
        c = self.config
        self.w_reg = c["w_reg"] * c["reg_multiplier"] ** sum(epoch > m for m in c["reg_milestones"])

    def __call__(self, model, x, y):
        c = self.config
        if self.mixup_alpha is not None:
            x, y_a, y_b, lam = mix(x, y, self.mixup_alpha)
        _, coverage, features, logits = model(x, loops=c["loops"])
        flat = logits.reshape(-1, logits.shape[-1])
        if self.mixup_alpha is None:
            ce = F.cross_entropy(flat, y.repeat(c["loops"]))
        else:
            ce = (lam * F.cross_entropy(flat, y_a.repeat(c["loops"]))
                  + (1 - lam) * F.cross_entropy(flat, y_b.repeat(c["loops"])))
        return c["w_ce"] * ce + self.w_reg * ciiv_regulariser(features, coverage)


class CiiVModel(RandomizedImageModel):
    """Deployed CiiV: one random draw of the `loops`-loop average per prediction."""

    surrogate = "one random draw of the retinotopic layer (the reference's own gradients)"

    def __init__(self, net: CiiVNet, num_classes: int, loops: int, batch_size: int = 256):
        super().__init__(net, num_classes, batch_size, prob_samples=4)
        self.loops = loops

    def sample_logits(self, x):
        return self.module(x, loops=self.loops)[0]

    def bpda_logits(self, x):
        """The same draw, with the exposure step differentiated as its expectation (BPDA)."""
        return self.module(x.to(self.device), loops=self.loops, bpda=True)[0]

    @torch.no_grad()
    def predict(self, xs) -> np.ndarray:
        out = []
        for start in range(0, len(xs), self.batch_size):
            x = as_tensor(xs[start:start + self.batch_size], self.device)
            out.append(self.sample_logits(x).argmax(1).cpu().numpy())
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def channel_statistics(xs: np.ndarray, normalize: bool):
    channels = xs.shape[1]
    if not normalize:
        return [0.0] * channels, [1.0] * channels
    mean = xs.mean(axis=(0, 2, 3))
    std = xs.std(axis=(0, 2, 3))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


class _CiiVBase:
    mixup = False
    # loops: retinotopic loops in training and inference (9 centres); num_samples N; omega;
    # normalize: standardise by the training set's channel mean / std first (the reference's
    # rgb_norm for CIFAR and mini-ImageNet; its Confounded-Toy config uses none).
    defaults = {**TRAIN_OPTIONS, "loops": 9, "num_samples": 3, "omega": 0.9,
                "centres": [5 / 32, 16 / 32, 27 / 32], "mask_alpha": 10.0, "normalize": True,
                "w_ce": 1.0, "w_reg": 0.1, "reg_multiplier": 10.0, "reg_milestones": [25, 50, 75]}

    def build(self, task, model_spec, config, context):
        if config["loops"] < 2 or config["num_samples"] < 1 or not 0 < config["omega"]:
            raise UsageError("ciiv: need loops >= 2, num_samples >= 1 and omega > 0")
        if len(config["centres"]) != 3:
            raise UsageError("ciiv: centres must list 3 fractions of the side (a 3 x 3 grid)")
        base = context.build_model(model_spec, task)
        if not hasattr(base, "features") or not hasattr(base, "head"):
            raise UsageError("ciiv needs an image model exposing features(x) and head")
        mean, std = channel_statistics(task.train.xs, config["normalize"])
        net = CiiVNet(base, mean, std, config["num_samples"], config["omega"], config["centres"],
                      config["mask_alpha"]).to(context.device)
        loss = CiiVLoss(config, config["mixup_alpha"] if self.mixup else None)
        name = "ciiv-mixup" if self.mixup else "ciiv"
        net = train_defended(task, model_spec, config, context, loss, f"{name} {task.name}",
                             module=net, on_epoch_start=loss.on_epoch_start)
        return CiiVModel(net, task.num_classes, config["loops"])


@register_defense("ciiv", modality="image", randomized=True)
class CiiV(_CiiVBase):
    """CiiV (Tang et al. 2021): retinotopic sampling (9 centres, N = 3, omega = 0.9) + CiiV loss."""


@register_defense("ciiv-mixup", modality="image", randomized=True)
class CiiVMixup(_CiiVBase):
    """CiiV + mixup (the reference's train_ciiv_mixup): CiiV's objective on mixup batches."""

    mixup = True
    defaults = {**_CiiVBase.defaults, "mixup_alpha": 1.0}
