"""Random-noise attacks of CiiV's Table 6 (gradient-free sanity checks after Carlini et al. 2019):
Gaussian noise (GN) and uniform noise (UN) inside an l-inf ball, the image kept in [0, 1]. They
never query the model; the noise is drawn from the batch's seed."""
import numpy as np

from attacks.vision.common import check_budget, perturbation_norm
from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack


def noisy_outcomes(xs: np.ndarray, noise: np.ndarray) -> list[AttackOutcome]:
    adversarial = np.clip(xs + noise, 0.0, 1.0).astype(np.float32)
    sizes = perturbation_norm(adversarial, xs, "linf")
    return [AttackOutcome(adversarial[i], 0, float(sizes[i])) for i in range(len(xs))]


@register_attack("gn", modality="image", threat="linf")
class GaussianNoise:
    """GN: x + clip(N(0, sigma^2), -eps, eps) per pixel, then clipped to [0, 1]. The paper gives
    eps = 16/255; sigma = 0.1 is the reference code's (attacker_config.yaml), not printed."""

    defaults = {"eps": 16 / 255, "sigma": 0.1}
    threat = "linf"

    def __init__(self, config: dict):
        check_budget("gn", config)
        if config["sigma"] <= 0:
            raise UsageError(f"attack 'gn': sigma must be > 0, got {config['sigma']}")
        self.config = config

    def describe(self) -> str:
        c = self.config
        return f"Gaussian noise, sigma={c['sigma']:g} clipped to l-inf eps={c['eps']:g}, no queries"

    def run(self, model, xs, ys, seed):
        c = self.config
        noise = np.random.default_rng(seed).normal(0.0, c["sigma"], size=xs.shape)
        return noisy_outcomes(xs, np.clip(noise, -c["eps"], c["eps"]))


@register_attack("un", modality="image", threat="linf")
class UniformNoise:
    """UN: x + U(-eps, eps) per pixel, then clipped to [0, 1]: uniform noise in the l-inf ball, as
    the paper prints it (eps = 16/255). (The reference code draws 0.1 * U(-1, 1) and clips it to eps,
    which puts the pixels whose draw exceeds eps on the ball's faces.)"""

    defaults = {"eps": 16 / 255}
    threat = "linf"

    def __init__(self, config: dict):
        check_budget("un", config)
        self.config = config

    def describe(self) -> str:
        return f"uniform noise in the l-inf ball eps={self.config['eps']:g}, no queries"

    def run(self, model, xs, ys, seed):
        eps = self.config["eps"]
        return noisy_outcomes(xs, np.random.default_rng(seed).uniform(-eps, eps, size=xs.shape))
