"""CISS (Zhao et al., ICML 2022, "Certified Robustness Against Natural Language Attacks by Causal
Intervention"): semantic smoothing in a latent space.

An IBP-capable encoder s(x) (the suite's TextCNN, its output layer mapping to `latent_size`) gives
the latent mean; the base classifier f sees s(x) + N(0, sigma^2 I). `head = "mlp"` is the light head
for the CPU tier; `head = "transformer"` decodes the latent into `decoder_length` input embeddings
of a registered text model (`head_model`, e.g. "hf" with `head_params`) as the paper feeds BERT's
inputs_embeds. Interval bounds of the encoder over the substitution boxes bound how far any
substitution moves the latent: R_hat = || max(upper - s(x), s(x) - lower) ||_2, the max-deviation
form of the paper (the reference code compares against the looser full box width || upper - lower ||;
we use the max deviation and name it in the unit). Training minimises
L_cls + gamma_t * max(0, R_hat - R + margin), R = sigma/2 (Phi^-1(p_A) - Phi^-1(p_B)) from the soft
scores clipped to [1 - soft_upper, soft_upper], with gamma_t = 0 for `warmup_epochs` (the
classifier on the noisy latent alone; the paper trains it to convergence first) then ramped
linearly to `gamma` over `ramp_epochs`. Defaults are the paper's (Sec. 4.1): sigma = 1, gamma = 4,
m = 1; Remark 3 needs gamma >= 1 / m, and a margin the soft radius cannot reach is refused. Certification is the paper's
Algorithm 2: certify_n0 noise draws pick the class, certify_n draws bound p_A, and the prediction is
certified iff it is correct and sigma * Phi^-1(p_A_lower) >= R_hat.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import certify as stats
from benchmark.errors import UsageError
from benchmark.interfaces import ABSTAIN, Certificate
from benchmark.models import build_model
from benchmark.registry import register_defense
from benchmark.specs import ModelSpec
from benchmark.train import TRAIN_DEFAULTS, device_of, fit
from defenses.text import intervals
from defenses.text.smoothing import call_rngs, example_rng

HEADS = ("mlp", "transformer")
UNIT = "latent_l2 (max deviation)"
CISS_DEFAULTS = {"latent_size": 64, "sigma": 1.0, "head": "mlp", "head_hidden": 128,
                 "head_model": "hf", "head_params": {}, "decoder_length": 16, "gamma": 4.0,
                 "margin": 1.0, "soft_upper": 0.99, "warmup_epochs": 1, "ramp_epochs": 2, "embedding_std": 0.01,
                 "predict_samples": 100, "predict_alpha": 0.05, "certify_n0": 100,
                 "certify_n": 5000, "eval_batch_size": 8192}
INFERENCE_KEYS = ("predict_samples", "predict_alpha", "certify_n0", "certify_n", "eval_batch_size")


class TransformerHead(nn.Module):
    """Latent -> `length` input embeddings of a text model (the paper's decoder into BERT's
    inputs_embeds) -> that model's logits."""

    def __init__(self, latent_size: int, length: int, text_model: nn.Module):
        super().__init__()
        self.length = length
        self.text_model = text_model
        self.width = text_model.embedding.embedding_dim
        self.decoder = nn.Linear(latent_size, length * self.width)

    def forward(self, z):
        embeddings = self.decoder(z).view(len(z), self.length, self.width)
        mask = torch.ones(len(z), self.length, dtype=torch.long, device=z.device)
        return self.text_model.forward_embeddings(embeddings, mask)


class CISSNetwork(nn.Module):
    """Encoder, head and the substitution candidates (a buffer, so it follows the device)."""

    def __init__(self, encoder, head, candidates: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer("candidates", candidates, persistent=False)

    def latent_bounds(self, input_ids, attention_mask, eps: float = 1.0) -> intervals.Bounds:
        """s(x) (dropout-free) and the box enclosing s(x') for every substitution x' of x."""
        boxes = intervals.substitution_boxes(self.encoder.embedding, self.candidates, input_ids, eps)
        features = intervals.textcnn_features(self.encoder, boxes, attention_mask)
        return intervals.affine(features, self.encoder.output)

    @staticmethod
    def max_deviation(bounds: intervals.Bounds) -> torch.Tensor:
        """R_hat: the l2 norm of the largest coordinate-wise distance from s(x) to the box."""
        return torch.maximum(bounds.upper - bounds.value, bounds.value - bounds.lower).norm(dim=1)


class Surrogate(nn.Module):
    """The white-box surrogate (text-classifier contract): encoder then head on the noise-free latent."""

    def __init__(self, network: CISSNetwork):
        super().__init__()
        self.network = network
        self.tokenizer = network.encoder.tokenizer

    @property
    def embedding(self) -> nn.Embedding:
        return self.network.encoder.embedding

    def forward_embeddings(self, embeddings, attention_mask):
        return self.network.head(self.network.encoder.forward_embeddings(embeddings, attention_mask))

    def forward(self, input_ids, attention_mask):
        return self.forward_embeddings(self.embedding(input_ids), attention_mask)

    def classify(self, texts: Sequence[str]):
        input_ids, attention_mask = self.tokenizer(texts)
        device = self.embedding.weight.device
        return self(input_ids.to(device), attention_mask.to(device))


def gamma_schedule(epoch: int, warmup: int, ramp: int, gamma: float) -> float:
    """0 during the warm-up epochs, then linear up to `gamma` over `ramp` epochs."""
    if epoch < warmup:
        return 0.0
    return gamma * min(1.0, (epoch - warmup + 1) / max(ramp, 1))


def soft_radius(logits: torch.Tensor, labels: torch.Tensor, sigma: float, upper: float) -> torch.Tensor:
    """The reference's differentiable radius sigma/2 (Phi^-1(p_A) - Phi^-1(p_B)): p_A is the label's
    score when the label is the top class, else the runner-up's. Its largest value is
    sigma * Phi^-1(upper) (2.33 sigma at 0.99), so a margin m above that can never be met."""
    probs = torch.softmax(logits, dim=1)
    top2 = probs.topk(2, dim=1).values
    correct = (probs.argmax(dim=1) == labels).float()
    # Both clipped to [1 - upper, upper]: p_A -> 0 (a confidently wrong example) would otherwise
    # give Phi^-1(0) = -infinity and an infinite loss.
    p_a = (top2[:, 0] * correct + top2[:, 1] * (1 - correct)).clamp(1 - upper, upper)
    p_b = (top2[:, 1] * correct + top2[:, 0] * (1 - correct)).clamp(1 - upper, upper)
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma / 2 * (normal.icdf(p_a) - normal.icdf(p_b))


class LatentSmoothing:
    """The deployed CISS model: majority vote of the head over noisy latents of one encoding."""

    randomized = True
    unit = UNIT

    def __init__(self, network: CISSNetwork, num_classes: int, config: dict):
        self.network = network.eval()
        self.num_classes = num_classes
        self.config = config
        self.sigma = config["sigma"]
        self.module = Surrogate(self.network)

    @torch.no_grad()
    def encode(self, xs: Sequence[str]) -> intervals.Bounds:
        device = device_of(self.network)
        input_ids, attention_mask = self.network.encoder.tokenizer(list(xs))
        return self.network.latent_bounds(input_ids.to(device), attention_mask.to(device))

    @torch.no_grad()
    def head_logits(self, latents: torch.Tensor, n: int, generators) -> torch.Tensor:
        """(examples, n, classes) logits of the head on n noisy copies of each latent; the noise of
        example i comes from generators[i] and the forward passes are batched across examples."""
        noise = torch.stack([torch.randn(n, latents.shape[1], generator=g) for g in generators])
        z = (latents.cpu()[:, None, :] + self.sigma * noise).reshape(-1, latents.shape[1])
        size = self.config["eval_batch_size"]
        device = device_of(self.network)
        logits = torch.cat([self.network.head(z[s:s + size].to(device)).float().cpu()
                            for s in range(0, len(z), size)])
        return logits.view(len(latents), n, -1)

    def counts(self, latents, n, generators) -> np.ndarray:
        predictions = self.head_logits(latents, n, generators).argmax(dim=2)
        return F.one_hot(predictions, self.num_classes).sum(dim=1).numpy()

    def _generators(self, count: int, rngs=None) -> list[torch.Generator]:
        rngs = rngs or call_rngs(count)
        return [torch.Generator().manual_seed(int(r.integers(0, 2**63 - 1))) for r in rngs]

    def predict(self, xs) -> np.ndarray:
        if not len(xs):
            return np.zeros(0, dtype=np.int64)
        counts = self.counts(self.encode(xs).value, self.config["predict_samples"], self._generators(len(xs)))
        return np.array([stats.predict(c, self.config["predict_alpha"]) for c in counts], dtype=np.int64)

    def probs(self, xs) -> np.ndarray:
        if not len(xs):
            return np.zeros((0, self.num_classes))
        counts = self.counts(self.encode(xs).value, self.config["predict_samples"], self._generators(len(xs)))
        return counts / counts.sum(axis=1, keepdims=True)

    def expected_probs(self, xs, samples: int) -> np.ndarray:
        if not len(xs):
            return np.zeros((0, self.num_classes))
        logits = self.head_logits(self.encode(xs).value, samples, self._generators(len(xs)))
        return torch.softmax(logits, dim=2).mean(dim=1).numpy()

    def latents(self, xs) -> np.ndarray:
        """s(x) of each text: where the certificate's R_hat is measured from (for the audit)."""
        return self.encode(xs).value.cpu().numpy()

    def vote_counts(self, xs, samples: int, seed: int, exact_limit: int = 0):
        """The head's votes on `samples` noisy latents of each text, the noise seeded by `seed`
        alone and the same for every text (common random numbers); never exact (Gaussian noise)."""
        generators = self._generators(len(xs), [example_rng(seed, 0) for _ in xs])
        return self.counts(self.encode(xs).value, samples, generators), np.zeros(len(xs), dtype=bool)

    def certify(self, xs, ys, alpha, seed) -> list[Certificate]:
        n0, n = self.config["certify_n0"], self.config["certify_n"]
        group = max(1, 200_000 // (n0 + n))
        certificates = []
        for start in range(0, len(xs), group):
            indices = list(range(start, min(start + group, len(xs))))
            bounds = self.encode([xs[i] for i in indices])
            r_hat = CISSNetwork.max_deviation(bounds).cpu().numpy()
            generators = self._generators(len(indices), [example_rng(seed, i) for i in indices])
            counts0 = self.counts(bounds.value, n0, generators)
            counts = self.counts(bounds.value, n, generators)
            for row, i in enumerate(indices):
                guess, p_lower = stats.certify(counts0[row], counts[row], alpha)
                details = {"r_hat": float(r_hat[row])}
                if guess == ABSTAIN:
                    certificates.append(Certificate(ABSTAIN, False, 0.0, UNIT, True, p_lower, n0 + n, details))
                    continue
                radius = float(stats.gaussian_radius(p_lower, self.sigma))
                robust = radius >= r_hat[row]
                certificates.append(Certificate(guess, bool(robust and guess == int(ys[i])), radius,
                                                UNIT, False, p_lower, n0 + n, details))
        return certificates


@register_defense("ciss", modality="text", certifies=True, unit=UNIT)
class CISS:
    """CISS: IBP encoder to a latent, Gaussian smoothing there, certified iff sigma*Phi^-1(p_A) >= R_hat."""

    defaults = {**TRAIN_DEFAULTS, **CISS_DEFAULTS}
    inference_keys = INFERENCE_KEYS

    def build(self, task, model_spec, config, context):
        self.check(config, task)
        encoder = intervals.require_textcnn(context.build_model(model_spec, task), "ciss")
        encoder.output = nn.Linear(encoder.output.in_features, config["latent_size"])
        intervals.small_embeddings(encoder, config["embedding_std"])
        if config["head"] == "mlp":
            head = nn.Sequential(nn.Linear(config["latent_size"], config["head_hidden"]), nn.ReLU(),
                                 nn.Linear(config["head_hidden"], task.num_classes))
        else:
            text_model = build_model(ModelSpec.make(config["head_model"], config["head_params"]), task)
            head = TransformerHead(config["latent_size"], config["decoder_length"], text_model)
        candidates = intervals.candidate_matrix(encoder.tokenizer, task.substitutions)
        network = CISSNetwork(encoder, head, candidates).to(context.device)
        schedule = {"gamma": 0.0}
        sigma = config["sigma"]

        def on_epoch_start(epoch):
            schedule["gamma"] = gamma_schedule(epoch, config["warmup_epochs"], config["ramp_epochs"],
                                               config["gamma"])

        def ciss_loss(model, texts, labels):
            input_ids, attention_mask = model.encoder.tokenizer(texts)
            input_ids, attention_mask = input_ids.to(labels.device), attention_mask.to(labels.device)
            bounds = model.latent_bounds(input_ids, attention_mask)
            logits = model.head(bounds.value + sigma * torch.randn_like(bounds.value))
            loss = F.cross_entropy(logits, labels)
            if schedule["gamma"] > 0:
                radius = soft_radius(logits, labels, sigma, config["soft_upper"])
                loss = loss + schedule["gamma"] * torch.relu(
                    CISSNetwork.max_deviation(bounds) - radius + config["margin"]).mean()
            return loss

        network = context.trained(network, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=ciss_loss, on_epoch_start=on_epoch_start,
            description=f"ciss {task.name}"))
        return LatentSmoothing(network, task.num_classes, config)

    @staticmethod
    def check(config, task):
        if task.substitutions is None:
            raise UsageError(f"defense 'ciss' needs a substitution table; task '{task.name}' has none")
        if config["head"] not in HEADS:
            raise UsageError(f"defense 'ciss': head must be one of {', '.join(HEADS)}, got {config['head']!r}")
        if config["sigma"] <= 0 or config["latent_size"] < 1 or config["embedding_std"] < 0:
            raise UsageError("defense 'ciss': sigma must be > 0, latent_size >= 1, embedding_std >= 0")
        if not 0.5 < config["soft_upper"] < 1:
            raise UsageError("defense 'ciss': soft_upper must be in (0.5, 1)")
        reachable = config["sigma"] * float(NormalDist().inv_cdf(config["soft_upper"]))
        if config["margin"] >= reachable:
            raise UsageError(
                f"defense 'ciss': margin {config['margin']:g} cannot be met: the soft radius is at "
                f"most sigma * Phi^-1(soft_upper) = {reachable:.3g} at sigma {config['sigma']:g}, so "
                f"the hinge never reaches 0; scale the margin with sigma (the paper's m = sigma = 1, "
                f"e.g. margin = {config['sigma']:g})")
        for key in ("predict_samples", "certify_n0", "certify_n", "eval_batch_size"):
            if config[key] < 1:
                raise UsageError(f"defense 'ciss': {key} must be >= 1")
