"""Gaussian randomized smoothing (Cohen, Rosenfeld and Kolter, 2019), the certified image baseline.

The base classifier is trained on inputs with Gaussian noise N(0, sigma^2 I) added; the smoothed
classifier g(x) = argmax_c P(f(x + delta) = c) is deployed through PREDICT (abstains unless a
binomial test separates the top two classes) and certified through CERTIFY (certify_n0 selection
votes, certify_n estimation votes, one-sided Clopper-Pearson bound at alpha, radius
sigma * Phi^-1(p_lower)), both from benchmark.certify. Certificates are l2 radii in the pixel units
of [0, 1] images.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.certify import certify, gaussian_radius, predict
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.registry import register_defense
from defenses.vision.common import TRAIN_OPTIONS, RandomizedImageModel, as_tensor, train_defended


def noise_loss(sigma: float):
    def loss_fn(model, x, y):
        return F.cross_entropy(model(x + sigma * torch.randn_like(x)), y)
    return loss_fn


class SmoothedClassifier(RandomizedImageModel):
    """Cohen et al.'s smoothed classifier around a trained base classifier."""

    unit = "l2"
    surrogate = "the base classifier on one Gaussian draw x + N(0, sigma^2)"

    def __init__(self, module, num_classes: int, sigma: float, certify_n0: int, certify_n: int,
                 predict_samples: int, predict_alpha: float, noise_batch: int = 4096):
        super().__init__(module, num_classes, prob_samples=predict_samples)
        self.sigma = sigma
        self.certify_n0, self.certify_n = certify_n0, certify_n
        self.predict_samples, self.predict_alpha = predict_samples, predict_alpha
        self.noise_batch = noise_batch
        self.decision_draws = predict_samples

    def sample_logits(self, x):
        return self.module(x + self.sigma * torch.randn_like(x))

    @torch.no_grad()
    def counts(self, x: torch.Tensor, samples: int) -> np.ndarray:
        """Votes of the base classifier over `samples` noise draws per image of x (B, C, H, W):
        a (B, num_classes) array. Images are batched together up to `noise_batch` draws."""
        votes = torch.zeros(len(x), self.num_classes, dtype=torch.long, device=x.device)
        per_call = max(1, self.noise_batch // samples)
        for start in range(0, len(x), per_call):
            images = x[start:start + per_call]
            remaining = samples
            while remaining > 0:
                size = min(remaining, self.noise_batch)
                batch = images.repeat_interleave(size, dim=0)
                labels = self.module(batch + self.sigma * torch.randn_like(batch)).argmax(1)
                onehot = F.one_hot(labels, self.num_classes).view(len(images), size, -1)
                votes[start:start + len(images)] += onehot.sum(1)
                remaining -= size
        return votes.cpu().numpy()

    def vote_frequencies(self, xs, samples: int) -> np.ndarray:
        if not len(xs):
            return np.zeros((0, self.num_classes))
        return self.counts(as_tensor(xs, self.device), samples) / samples

    def probs(self, xs) -> np.ndarray:
        """Vote frequencies over predict_samples draws (the smoothed classifier's class scores)."""
        return self.vote_frequencies(xs, self.predict_samples)

    def predict(self, xs) -> np.ndarray:
        if not len(xs):
            return np.zeros(0, dtype=np.int64)
        counts = self.counts(as_tensor(xs, self.device), self.predict_samples)
        return np.array([predict(c, self.predict_alpha) for c in counts], dtype=np.int64)

    def vote_counts(self, xs, samples: int, seed: int, exact_limit: int = 0):
        """The base classifier's votes on `samples` Gaussian draws per image, seeded by `seed`
        (for the audit); never exact."""
        torch.manual_seed(seed)
        return self.counts(as_tensor(xs, self.device), samples), np.zeros(len(xs), dtype=bool)

    def certify(self, xs, ys, alpha: float, seed: int) -> list[Certificate]:
        torch.manual_seed(seed)
        out = []
        x = as_tensor(xs, self.device)
        all_selection = self.counts(x, self.certify_n0)
        all_estimation = self.counts(x, self.certify_n)
        for selection, estimation, label in zip(all_selection, all_estimation, ys):
            prediction, p_lower = certify(selection, estimation, alpha)
            abstained = prediction == ABSTAIN
            radius = 0.0 if abstained else gaussian_radius(p_lower, self.sigma)
            out.append(Certificate(prediction=int(prediction),
                                   certified=bool(not abstained and prediction == int(label)),
                                   radius=float(radius), unit=self.unit, abstained=abstained,
                                   p_lower=p_lower, samples=self.certify_n0 + self.certify_n))
        return out


@register_defense("randomized-smoothing", modality="image", certifies=True, unit="l2",
                  randomized=True)
class RandomizedSmoothing:
    """Gaussian randomized smoothing (Cohen et al. 2019): noise training, PREDICT, CERTIFY (l2)."""

    # sigma: noise level in training and certification; certify_n0 / certify_n: CERTIFY's
    # selection and estimation samples (Cohen: n0 = 100, n = 100,000); predict_samples,
    # predict_alpha: PREDICT's samples and test level (Cohen: 100 and 0.001 in their prediction
    # experiments).
    defaults = {**TRAIN_OPTIONS, "sigma": 0.25, "certify_n0": 100, "certify_n": 100000,
                "predict_samples": 100, "predict_alpha": 0.001}
    # Sample counts and the prediction level do not shape training: entries differing only in
    # them share one trained model.
    inference_keys = ("certify_n0", "certify_n", "predict_samples", "predict_alpha")

    def build(self, task, model_spec, config, context):
        if config["sigma"] <= 0 or min(config["certify_n0"], config["certify_n"],
                                       config["predict_samples"]) < 1:
            raise UsageError("randomized-smoothing: need sigma > 0 and certify_n0, certify_n, "
                             "predict_samples >= 1")
        module = train_defended(task, model_spec, config, context, noise_loss(config["sigma"]),
                                f"smoothing {task.name}")
        return SmoothedClassifier(module, task.num_classes, config["sigma"], config["certify_n0"],
                                  config["certify_n"], config["predict_samples"],
                                  config["predict_alpha"])
