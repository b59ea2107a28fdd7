"""PGD that also records where its perturbation went on Confounded-Toy (CiiV, Figures 3 and 9): the
share of each example's l1 perturbation that lands on the colour blocks (the confounder) rather
than on the white geometry (the cause). Confounded-Toy draws its shapes pure white, (1, 1, 1), and
its block colours never reach 1 in every channel, so the blocks are the clean image's non-white
pixels; the task needs no extra field."""
import numpy as np

from attacks.vision.pgd import PGD
from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack


def colour_block_share(adversarial: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per example: the l1 perturbation on non-white pixels over the whole l1 perturbation (NaN
    where nothing moved)."""
    moved = np.abs(adversarial - original).sum(axis=1)  # N x H x W, summed over channels
    blocks = ~(original == 1.0).all(axis=1)
    total = moved.reshape(len(original), -1).sum(axis=1)
    on_blocks = (moved * blocks).reshape(len(original), -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return on_blocks / total


@register_attack("pgd-block-share", modality="image", threat="lp")
class PGDBlockShare(PGD):
    """PGD, each outcome recording `colour_block_share` (see the module docstring)."""

    name = "pgd-block-share"

    def describe(self) -> str:
        return f"{super().describe()}; records the share of the perturbation on the colour blocks"

    def run(self, model, xs, ys, seed):
        if xs.ndim != 4 or xs.shape[1] != 3:
            raise UsageError(f"attack 'pgd-block-share' measures Confounded-Toy's colour blocks and "
                             f"needs RGB images (N x 3 x H x W), got shape {xs.shape}")
        outcomes = super().run(model, xs, ys, seed)
        shares = colour_block_share(np.stack([o.adversarial for o in outcomes]), xs)
        return [AttackOutcome(o.adversarial, o.queries, o.perturbation,
                              {"colour_block_share": None if np.isnan(s) else float(s)})
                for o, s in zip(outcomes, shares)]
