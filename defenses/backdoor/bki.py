"""BKI (Chen and Dai, "Mitigating backdoor attacks in LSTM-based text classification systems by
Backdoor Keyword Identification", Neurocomputing 2021; OpenBackdoor's BKIDefender): a trigger word
moves the backdoored model's sentence representation more than any ordinary word, and it does so in
many training texts. BKI finds that keyword in the poisoned training split, removes the training
texts it marks, and trains the model again on the rest.

1. A model is trained as `vanilla` on the whole (poisoned) training split.
2. For every training text w_1 .. w_n and each i, the importance of w_i is the L-infinity norm of
   the change in the model's sentence representation when w_i is deleted; the text's `top_words`
   most important words (5, the paper's p) are its suspicious words, each with its importance.
3. A word's keyword score is the mean importance over the texts that list it, times log10 of how
   many texts list it; the highest-scoring word is the backdoor keyword (OpenBackdoor keeps one).
4. Every training text that lists the keyword among its suspicious words is removed, and the model
   is trained again, from scratch, on the remaining texts: that model is deployed.

The sentence representation is the input of the classification layer (`output`: the pooled
features of textcnn and bilstm); for a Hugging Face classifier, the last layer's first-token
(CLS) state, as OpenBackdoor's victims give it. BKI uses no clean held-out data: it works on the
poisoned training split alone. Words are whitespace-separated and compared lower-cased.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import numpy as np
import torch

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit

ANALYSIS_TEXTS = 32  # texts whose deletion variants are classified in one batch


@torch.no_grad()
def sentence_representations(module, texts: list[str]) -> torch.Tensor:
    """(len(texts), d): what the model's classification layer reads for each text."""
    module.eval()
    if hasattr(module, "output"):
        captured = []
        hook = module.output.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
        try:
            module.classify(texts)
        finally:
            hook.remove()
        return captured[0]
    if hasattr(module, "model") and hasattr(module.model, "config"):
        input_ids, attention_mask = module.tokenizer(texts)
        device = module.embedding.weight.device
        output = module.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                              output_hidden_states=True)
        return output.hidden_states[-1][:, 0]
    raise UsageError("bki: the model has neither an `output` classification layer (textcnn, bilstm) "
                     "nor a Hugging Face encoder; BKI needs a sentence representation to compare")


def suspicious_words(module, texts: list[str], top_words: int) -> list[list[tuple[str, float]]]:
    """Per text, its `top_words` words whose deletion moves the representation most (L-inf), with
    that change, most important first (ties: the earlier word)."""
    result = []
    for start in range(0, len(texts), ANALYSIS_TEXTS):
        chunk = texts[start:start + ANALYSIS_TEXTS]
        variants = []  # each text, then the text without each of its words
        for text in chunk:
            words = text.split()
            variants.append(text)
            variants.extend(" ".join(words[:i] + words[i + 1:]) for i in range(len(words)))
        representations = sentence_representations(module, variants).cpu().numpy()
        offset = 0
        for text in chunk:
            words = text.lower().split()
            whole, deleted = representations[offset], representations[offset + 1:offset + 1 + len(words)]
            offset += 1 + len(words)
            changes = np.abs(deleted - whole).max(axis=1) if len(words) else np.zeros(0)
            order = np.argsort(-changes, kind="stable")[:top_words]
            result.append([(words[i], float(changes[i])) for i in order])
    return result


def backdoor_keyword(suspicious: list[list[tuple[str, float]]]) -> str:
    """The word maximising mean importance x log10(number of texts listing it)."""
    listed, importance = defaultdict(int), defaultdict(float)
    for words in suspicious:
        for word, value in words:
            listed[word] += 1
            importance[word] += value
    return max(sorted(listed), key=lambda w: importance[w] / listed[w] * math.log10(listed[w]))


class BkiModel(ClassifierModel):
    """The model retrained without the texts marked by the keyword; `keyword` and `removed` (the
    training indices dropped) say what BKI found."""

    def __init__(self, module, num_classes: int, keyword: str, removed: np.ndarray):
        super().__init__(module, num_classes)
        self.keyword = keyword
        self.removed = removed


@register_defense("bki", modality="text", backdoor=True)
class Bki:
    """BKI: find the backdoor keyword in the poisoned training set, drop its texts, retrain."""

    defaults = {**TRAIN_DEFAULTS, "top_words": 5}

    def build(self, task, model_spec, config, context):
        if config["top_words"] < 1:
            raise UsageError(f"bki: top_words must be >= 1, got {config['top_words']}")
        train = task.train

        def train_on(split, name):
            on = dataclasses.replace(task, train=split)
            module = context.build_model(model_spec, on)
            return context.trained(module, lambda m: fit(
                m, split.xs, split.ys, epochs=config["epochs"], batch_size=config["batch_size"],
                lr=config["lr"], weight_decay=config["weight_decay"], seed=context.seed,
                description=f"bki {name} {task.name}"), name=name)

        backdoored = train_on(train, "backdoored")
        suspicious = suspicious_words(backdoored, list(train.xs), config["top_words"])
        keyword = backdoor_keyword(suspicious)
        removed = np.asarray([i for i, words in enumerate(suspicious)
                              if keyword in {w for w, _ in words}], dtype=np.int64)
        kept = np.setdiff1d(np.arange(len(train)), removed)
        if not len(kept):
            raise UsageError(f"bki: the keyword {keyword!r} marks every training text; nothing "
                             f"is left to train on")
        module = train_on(train.subset(kept, "train"), "model")
        return BkiModel(module, task.num_classes, keyword, removed)
