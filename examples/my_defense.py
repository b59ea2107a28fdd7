"""A worked example of a defense submission: training on Gaussian-noise-augmented images.

The whole submission is this file. Submit it, see it on the leaderboard, and verify it:

    rbench submit examples/my_defense.py --suite mini --name gaussian-augment
    rbench leaderboard mini --html
    rbench verify leaderboards/mini/submissions/gaussian-augment.json

The harness trains nothing and measures nothing on the defense's behalf beyond calling `build`:
it picks the examples, runs the suite's attacks and computes every number.
"""
import torch

from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, cross_entropy_loss, fit


@register_defense("gaussian-augment", modality="image")
class GaussianAugment:
    """Standard training on images with N(0, sigma^2) pixel noise added (then clipped to [0, 1])."""

    # Every configuration key with its default; the suite's `train` settings (epochs, lr, ...)
    # override the TRAIN_DEFAULTS keys, so the defense trains as long as the suite's baseline.
    defaults = {**TRAIN_DEFAULTS, "sigma": 0.1}

    def build(self, task, model_spec, config, context):
        def noisy_loss(model, images, labels):
            noise = config["sigma"] * torch.randn_like(images)
            return cross_entropy_loss(model, (images + noise).clamp(0.0, 1.0), labels)

        module = context.build_model(model_spec, task)  # the suite's architecture for this task
        # context.trained caches the weights by the hash of everything that shaped them.
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=noisy_loss, description=f"gaussian-augment {task.name}"))
        # The deployed model: predict (argmax), probs, and differentiable logits for white-box attacks.
        return ClassifierModel(module, task.num_classes)
