"""CausalAdv (Zhang et al., ICLR 2022): adversarial distribution alignment.

`objective = "paper"` (the default) is the printed Eq. 11, minimised jointly over h and g:

    L_content + lambda * (CE(g(s(x_adv)), y) + beta * CE(g(s(x)), y))

where L_content is the Madry term (CausalAdv-M: CE(h(x_adv), y), gamma = 0) or the TRADES term
(CausalAdv-T: CE(h(x), y) + trades_beta * KL(h(x) || h(x_adv)), the first term's labels replaced by
the model's prediction), beta = 1 (App. D: "in all of our experiments beta is set to 1.0"), and
x_adv maximises the classification loss alone (Eq. 2: CE for -M, TRADES' KL for -T).

`objective = "reference"` is the reference code's form (YonggangZhangUSTC/CausalAdv):

    trades_beta * L_content + lambda * L_style

where L_style aligns the style predictions on adversarial inputs with those on natural inputs
(cross-entropy from softmax(g(s(x))) to softmax(g(s(x_adv)))), g is fitted alone by its own
optimizer on the natural styles, and the training attack maximises trades_beta * L_content +
lambda * L_style. (There, L_content for -T is CE(natural) / trades_beta + KL, so the product is TRADES.)

- The style representation s(x) projects the normalised features onto a basis of the orthogonal
  complement of the classifier weights under the feature covariance: random orthonormal anchor
  directions with every component along Sigma w_c (c = 1..C) removed (Sigma: running covariance of
  the normalised features), so s carries what the label head does not read.
- g is a small network fitting the spurious correlation between Y and S (the non-linear g of the
  paper's main tables, Table 5), with the sigma-adjusted softmax of Eq. 10: its logit for class j
  is shifted by ratio / 2 * (w_j - w_y)^T Sigma_y (w_j - w_y), Sigma_y the running
  class-conditional covariance of g's normalised hidden features (the reference's estimate of the
  paper's sigma^2 I).
- Schedules, which the paper does not print, as the reference code: lambda and the sigma ratio
  rise linearly from 0 to their values over training (value * epoch / epochs). trades_beta = 6 for
  -T (TRADES' value); lambda = 1; ratio = 1.
- `detach_target` (reference objective only): the natural style prediction is the fixed target of
  the alignment; the reference also back-propagates through it, which collapsed training on the
  small models of the mini suite. `detach_target = false` restores the reference's gradient.

Only h is deployed; g and the basis exist for training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from defenses.vision.common import (ADVERSARIAL_OPTIONS, OMITTED_AT_DEFAULT, TRAIN_OPTIONS,
                                    AttackBudget, EpochCrossEntropy, eval_mode, kl_to, pgd_linf,
                                    train_defended)


OBJECTIVES = ("paper", "reference")


def normalise(f: torch.Tensor) -> torch.Tensor:
    return f / (f.norm(dim=1, keepdim=True) + 1e-6)


class RunningCovariance:
    """Running per-class mean and covariance of feature vectors, merged batch by batch with the
    pooled-variance update (exact for the union of all batches seen)."""

    def __init__(self, dim: int, num_classes: int, device: torch.device):
        self.count = torch.zeros(num_classes, device=device)
        self.mean = torch.zeros(num_classes, dim, device=device)
        self.cov = torch.zeros(num_classes, dim, dim, device=device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        onehot = F.one_hot(labels, len(self.count)).to(features.dtype)  # N x C
        n_batch = onehot.sum(0)                                          # C
        safe = n_batch.clamp(min=1)
        mean_batch = onehot.t() @ features / safe[:, None]              # C x d
        centred = features[:, None, :] - mean_batch[None]                # N x C x d
        weighted = centred * onehot[:, :, None]
        cov_batch = torch.einsum("ncd,nce->cde", weighted, centred) / safe[:, None, None]
        total = self.count + n_batch
        w = torch.where(total > 0, n_batch / total.clamp(min=1), torch.zeros_like(total))
        delta = self.mean - mean_batch
        self.cov = (self.cov * (1 - w)[:, None, None] + cov_batch * w[:, None, None]
                    + (w * (1 - w))[:, None, None] * delta[:, :, None] * delta[:, None, :])
        self.mean = self.mean * (1 - w)[:, None] + mean_batch * w[:, None]
        self.count = total


class StyleBasis:
    """A basis of the orthogonal complement of {Sigma w_c}: fixed random orthonormal anchors
    (a seeded Haar-random rotation), projected and renormalised at every call."""

    def __init__(self, dim: int, device: torch.device, generator: torch.Generator):
        gaussian = torch.randn(dim, dim, generator=generator).to(device)
        self.anchor, _ = torch.linalg.qr(gaussian)           # orthonormal columns
        self.anchor = self.anchor.t().contiguous()           # rows are the anchor directions
        self.covariance = RunningCovariance(dim, 1, device)

    @torch.no_grad()
    def update(self, features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Update Sigma with the batch's normalised features; return the d x d style basis."""
        self.covariance.update(normalise(features), torch.zeros(len(features), dtype=torch.long,
                                                                device=features.device))
        references = weight @ self.covariance.cov[0]         # rows: (Sigma w_c)^T, C x d
        # Orthogonal projection onto the complement of span{Sigma w_c}.
        q, r = torch.linalg.qr(references.t())               # d x C
        keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max().clamp(min=1e-30)
        q = q[:, keep]
        projected = self.anchor - (self.anchor @ q) @ q.t()
        return projected / (projected.norm(dim=1, keepdim=True) + 1e-12)


def style(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return normalise(features) @ basis.t()


class StylePredictor(nn.Module):
    """g: predicts Y from the style S, with the sigma-adjusted logits of Eq. 10."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        hidden = max(dim // 2, 1)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, dim), nn.ReLU())
        self.fc = nn.Linear(dim, num_classes)
        self.covariance: RunningCovariance | None = None

    def forward(self, s: torch.Tensor, y: torch.Tensor, ratio: float,
                update_covariance: bool = False) -> torch.Tensor:
        hidden = self.body(s)
        logits = self.fc(hidden)
        if self.covariance is None:
            self.covariance = RunningCovariance(hidden.shape[1], self.fc.out_features, s.device)
        if update_covariance:
            self.covariance.update(normalise(hidden.detach()), y)
        weight = self.fc.weight                              # C x d
        # shift[c, j] = (w_j - w_c)^T Sigma_c (w_j - w_c), then each example takes its class's row.
        difference = weight[None] - weight[:, None]          # C x C x d
        sigma = self.covariance.cov.detach()                 # C x d x d
        shift = ((difference @ sigma) * difference).sum(2)
        return logits + 0.5 * ratio * shift[y]


def soft_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


class CausalAdvTrainer:
    """The per-batch CausalAdv update as a loss function for benchmark.train.fit."""

    def __init__(self, model: nn.Module, num_classes: int, config: dict, mode: str, seed: int):
        if not hasattr(model, "features") or not hasattr(model, "head"):
            raise UsageError("CausalAdv needs an image model exposing features(x) and head")
        if config["objective"] not in OBJECTIVES:
            raise UsageError(f"causaladv-{mode}: objective must be one of {', '.join(OBJECTIVES)}, "
                             f"got {config['objective']!r}")
        self.mode = mode
        self.config = config
        self.paper = config["objective"] == "paper"
        self.budget = AttackBudget(f"causaladv-{mode}", config)
        self.cross_entropy = EpochCrossEntropy()
        device = next(model.parameters()).device
        dim = model.head.in_features
        generator = torch.Generator().manual_seed(seed)
        self.basis = StyleBasis(dim, device, generator)
        self.g = StylePredictor(dim, num_classes).to(device)
        if config["optimizer"] == "sgd":
            self.g_optimizer = torch.optim.SGD(self.g.parameters(), lr=config["lr"],
                                               momentum=config["momentum"],
                                               weight_decay=config["weight_decay"])
        else:
            self.g_optimizer = torch.optim.Adam(self.g.parameters(), lr=config["lr"],
                                                weight_decay=config["weight_decay"])
        self.lam = 0.0
        self.ratio = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        c = self.config
        self.budget.on_epoch_start(epoch)
        fraction = epoch / c["epochs"]
        self.lam = min(max(c["lambda"] * fraction, 0.0), c["lambda"])
        self.ratio = min(max(c["ratio"] * fraction, 0.0), c["ratio"])
        decay = c["lr_gamma"] ** sum(epoch >= m for m in c["lr_milestones"])
        for group in self.g_optimizer.param_groups:
            group["lr"] = c["lr"] * decay

    def content_loss(self, logits_adv, logits_nat, y):
        """The Madry (-M) or TRADES (-T) term, as the objective weighs it; its classification
        cross-entropy (adversarial for -M, natural for -T) goes into the training record."""
        self.cross_entropy.add(logits_adv if self.mode == "m" else logits_nat, y)
        if self.mode == "m":
            return F.cross_entropy(logits_adv, y)
        kl = kl_to(logits_adv, torch.softmax(logits_nat, dim=1))
        if self.paper:
            return F.cross_entropy(logits_nat, y) + self.config["trades_beta"] * kl
        return F.cross_entropy(logits_nat, y) / self.config["trades_beta"] + kl

    def adversarial(self, model, x, y, basis):
        """The training attack, from a uniform start (-M) or TRADES' 0.001 * N(0, 1) start (-T). It
        maximises the classification loss (paper, Eq. 2), or trades_beta * content + lambda *
        style at the full lambda and ratio (reference)."""
        c = self.config
        with eval_mode(model), eval_mode(self.g):
            with torch.no_grad():
                features = model.features(x)
                natural = torch.softmax(model.head(features), dim=1)
                if not self.paper:
                    style_target = torch.softmax(self.g(style(features, basis), y, c["ratio"]),
                                                 dim=1)

            def objective(a):
                f = model.features(a)
                z = model.head(f)
                content = F.cross_entropy(z, y) if self.mode == "m" else kl_to(z, natural)
                if self.paper:
                    return content
                style_term = soft_cross_entropy(style_target, self.g(style(f, basis), y, c["ratio"]))
                return c["trades_beta"] * content + c["lambda"] * style_term

            return pgd_linf(objective, x, self.budget.eps, self.budget.step_size, c["steps"],
                            start="uniform" if self.mode == "m" else "gaussian")

    def __call__(self, model, x, y):
        return self.paper_loss(model, x, y) if self.paper else self.reference_loss(model, x, y)

    def natural_and_adversarial(self, model, x, y):
        """h's logits and the style of x and of its training-attack example x_adv, after updating
        the style basis with this batch."""
        features = model.features(x)
        basis = self.basis.update(features.detach(), model.head.weight.detach())
        x_adv = self.adversarial(model, x, y, basis)
        features_adv = model.features(x_adv)
        return (model.head(features), model.head(features_adv), style(features, basis),
                style(features_adv, basis))

    def paper_loss(self, model, x, y):
        """Eq. 11, minimised jointly over h and g. fit's optimizer holds h's parameters only, so g's
        optimizer steps here on the gradient the previous batch's loss left in g: the same joint
        descent on (theta, W_g) with g's update applied at the start of the next step."""
        if any(p.grad is not None for p in self.g.parameters()):
            self.g_optimizer.step()
        self.g_optimizer.zero_grad()
        logits, logits_adv, s, s_adv = self.natural_and_adversarial(model, x, y)
        self.g.train()
        style_nat = self.g(s, y, self.ratio, update_covariance=True)
        style_adv = self.g(s_adv, y, self.ratio)
        loss_style = (F.cross_entropy(style_adv, y)
                      + self.config["beta"] * F.cross_entropy(style_nat, y))
        return self.content_loss(logits_adv, logits, y) + self.lam * loss_style

    def reference_loss(self, model, x, y):
        logits, logits_adv, s, s_adv = self.natural_and_adversarial(model, x, y)

        # g: fit the spurious correlation between Y and the natural style.
        self.g.train()
        g_loss = F.cross_entropy(self.g(s.detach(), y, self.ratio, update_covariance=True), y)
        self.g_optimizer.zero_grad()
        g_loss.backward()
        self.g_optimizer.step()

        # h: align the adversarial with the natural distribution (content and style).
        self.g.eval()
        style_nat = self.g(s, y, self.ratio)
        style_adv = self.g(s_adv, y, self.ratio)
        target = torch.softmax(style_nat, dim=1)
        if self.config["detach_target"]:
            target = target.detach()
        loss_style = soft_cross_entropy(target, style_adv)
        loss = (self.config["trades_beta"] * self.content_loss(logits_adv, logits, y)
                + self.lam * loss_style)
        return loss  # its gradient also reaches g; g's optimizer clears that before g's next step


class _CausalAdv:
    mode = "m"
    # beta: the paper's weight of the natural style term (Eq. 11); trades_beta: TRADES' weight of
    # the KL term (-T). detach_target (reference objective): the style term aligns the adversarial
    # style prediction with the natural one held fixed (True), or also moves the natural one
    # (False, as the reference code does; on the mini suite's small CNNs that collapses training:
    # digits clean accuracy 0.18 vs 0.81).
    defaults = {**TRAIN_OPTIONS, **ADVERSARIAL_OPTIONS, "objective": "paper",
                "beta": 1.0, "trades_beta": 1.0, "lambda": 1.0, "ratio": 1.0,
                "detach_target": True}
    omitted_at_default = OMITTED_AT_DEFAULT

    def build(self, task, model_spec, config, context):
        module = context.build_model(model_spec, task)
        trainer = CausalAdvTrainer(module, task.num_classes, config, self.mode, context.seed)
        module = train_defended(task, model_spec, config, context, trainer,
                                f"causaladv-{self.mode} {task.name}", module=module,
                                on_epoch_start=trainer.on_epoch_start,
                                cross_entropy=trainer.cross_entropy)
        return ClassifierModel(module, task.num_classes)


@register_defense("causaladv-m", modality="image")
class CausalAdvM(_CausalAdv):
    """CausalAdv-M (Zhang et al. 2022): Madry term + lambda * style terms (Eq. 11)."""

    mode = "m"


@register_defense("causaladv-t", modality="image")
class CausalAdvT(_CausalAdv):
    """CausalAdv-T (Zhang et al. 2022): TRADES term (trades_beta = 6) + lambda * style terms (Eq. 11)."""

    mode = "t"
    defaults = {**_CausalAdv.defaults, "trades_beta": 6.0}
