"""IBP certified training against word substitution (Jia et al., EMNLP 2019).

The model is the suite's TextCNN over word embeddings (trained from scratch: a certificate is sound
whatever the embedding). Each word's box spans the embeddings of the word and its substitutes; bounds
are propagated through the network (defenses.text.intervals). Training mixes the clean loss with the
worst-case loss over the boxes, (1 - kappa) CE(clean) + kappa CE(worst), with kappa ramped linearly
from `initial_kappa` to `kappa` and the box scale epsilon from `initial_eps` to `eps` over the epochs
between `clean_epochs` (clean loss only) and the last `full_epochs` (final values), as the seed does.
The certificate is exact and deterministic: the prediction cannot change under any combination of
substitutions when the lower bound of its margin over every other class is positive (unit
`synonym_set`, radius 1 for the whole set).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.interfaces import Certificate
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, device_of, fit
from defenses.text import intervals

IBP_DEFAULTS = {"kappa": 0.8, "initial_kappa": 0.0, "eps": 1.0, "initial_eps": 0.0,
                "clean_epochs": 0, "full_epochs": 0, "embedding_std": 0.01}


def ramp(epoch: int, epochs: int, clean: int, full: int, start: float, end: float) -> float:
    """The seed's schedule: 0 for the first `clean` epochs, then linear from `start` to `end` over the
    epochs before the last `full` ones, then `end`."""
    if epoch < clean:
        return 0.0
    steps = epochs - clean - full
    if steps <= 1:
        return end
    return float(np.linspace(start, end, steps)[min(epoch - clean, steps - 1)])


def check_ibp_config(config: dict) -> None:
    for key in ("kappa", "initial_kappa", "eps", "initial_eps"):
        if not 0 <= config[key] <= 1:
            raise UsageError(f"defense 'ibp': {key} must be in [0, 1], got {config[key]}")
    if config["clean_epochs"] < 0 or config["full_epochs"] < 0 or config["embedding_std"] < 0:
        raise UsageError("defense 'ibp': clean_epochs, full_epochs and embedding_std must be >= 0")


class IntervalCertifiedModel(ClassifierModel):
    """The deployed TextCNN; `certify` bounds its margins over every substitution at once."""

    unit = "synonym_set"

    def __init__(self, module, num_classes: int, candidates: torch.Tensor):
        super().__init__(module, num_classes)
        self.candidates = candidates.to(device_of(module))

    @torch.no_grad()
    def margins(self, xs) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean predictions, lower bounds of logit[prediction] - logit[c]) for a batch of texts."""
        device = device_of(self.module)
        input_ids, attention_mask = self.module.tokenizer(list(xs))
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        boxes = intervals.substitution_boxes(self.module.embedding, self.candidates, input_ids)
        features = intervals.textcnn_features(self.module, boxes, attention_mask)
        predictions = self.module.output(features.value).argmax(dim=1)
        return predictions, intervals.margin_lower_bounds(features, self.module.output, predictions)

    def certify(self, xs, ys, alpha, seed) -> list[Certificate]:
        certificates = []
        for start in range(0, len(xs), self.batch_size):
            predictions, margins = self.margins(xs[start:start + self.batch_size])
            margins.scatter_(1, predictions[:, None], float("inf"))
            robust = (margins > 0).all(dim=1)
            for prediction, ok, y in zip(predictions.tolist(), robust.tolist(), ys[start:start + self.batch_size]):
                certificates.append(Certificate(prediction, bool(ok and prediction == int(y)),
                                                1.0 if ok else 0.0, self.unit))
        return certificates


@register_defense("ibp", modality="text", certifies=True, unit="synonym_set")
class IBP:
    """IBP (Jia et al. 2019): certified training of a CNN over word-substitution boxes, exact certificate."""

    defaults = {**TRAIN_DEFAULTS, **IBP_DEFAULTS}

    def build(self, task, model_spec, config, context):
        check_ibp_config(config)
        if task.substitutions is None:
            raise UsageError(f"defense 'ibp' needs a substitution table; task '{task.name}' has none")
        module = intervals.require_textcnn(context.build_model(model_spec, task), "ibp")
        candidates = intervals.candidate_matrix(module.tokenizer, task.substitutions).to(context.device)
        intervals.small_embeddings(module, config["embedding_std"])
        schedule = {"kappa": 0.0, "eps": 0.0}

        def on_epoch_start(epoch):
            args = (epoch, config["epochs"], config["clean_epochs"], config["full_epochs"])
            schedule["kappa"] = ramp(*args, config["initial_kappa"], config["kappa"])
            schedule["eps"] = ramp(*args, config["initial_eps"], config["eps"])

        def certified_loss(model, texts, labels):
            input_ids, attention_mask = model.tokenizer(texts)
            input_ids, attention_mask = input_ids.to(labels.device), attention_mask.to(labels.device)
            clean = F.cross_entropy(model(input_ids, attention_mask), labels)
            if schedule["kappa"] == 0:
                return clean
            boxes = intervals.substitution_boxes(model.embedding, candidates, input_ids, schedule["eps"])
            features = intervals.textcnn_features(model, boxes, attention_mask)
            margins = intervals.margin_lower_bounds(features, model.output, labels)
            worst = F.cross_entropy(intervals.worst_case_logits(margins), labels)
            return (1 - schedule["kappa"]) * clean + schedule["kappa"] * worst

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=certified_loss, on_epoch_start=on_epoch_start,
            description=f"ibp {task.name}"))
        return IntervalCertifiedModel(module, task.num_classes, candidates)
