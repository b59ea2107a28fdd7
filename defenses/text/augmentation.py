"""Adversarial data augmentation with the task's substitution table, RanMASK's "Data Augmentation"
baseline (Tables 4-7): "during the training time, they replace a word with one of its synonyms that
maximizes the prediction loss. By augmenting these adversarial examples with the original training
data, the model is robust to such perturbations" (RanMASK, Section 4, after Miyato et al. 2017 and
Sato et al. 2018).

Per training batch, with the model as it is at that step (in eval mode, no gradients):
- which words: every word of the text that has neighbours in the task's substitution table (the
  Jia et al. table on the real tasks; the table's words, not an embedding's);
- which neighbour: for each such word, every table neighbour is tried alone (the text with only
  that word replaced) and the one giving the highest loss on the true label is chosen;
- how many: each such word whose best neighbour raises the loss above the unchanged text's is
  replaced, all at once, in one adversarial copy of the text (the others stay);
- the model then trains on the mean loss over the batch and its adversarial copies (2 x batch).
The search classifies one text per (word, neighbour) of the batch: with the Jia table, 52 texts
per SST-2 training text on average (9.6 of its 19.3 words have neighbours) and 100 per AG News one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit

SEARCH_BATCH = 512  # texts per forward pass of the neighbour search


@torch.no_grad()
def adversarial_copies(model, texts, labels: torch.Tensor, table) -> list[str]:
    """Each text with every table word replaced by its loss-maximising neighbour, where that
    neighbour alone raises the loss above the unchanged text's."""
    was_training = model.training
    model.eval()
    variants, owners = [], []  # (text index, word position, neighbour) of each variant
    words = [text.split() for text in texts]
    for i, text_words in enumerate(words):
        for j, word in enumerate(text_words):
            for neighbour in table[word.lower()]:
                variants.append(" ".join(text_words[:j] + [neighbour] + text_words[j + 1:]))
                owners.append((i, j, neighbour))
    clean_loss = F.cross_entropy(model.classify(list(texts)), labels, reduction="none")
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for start in range(0, len(variants), SEARCH_BATCH):
        chunk = owners[start:start + SEARCH_BATCH]
        index = torch.tensor([i for i, _, _ in chunk], device=labels.device)
        losses = F.cross_entropy(model.classify(variants[start:start + SEARCH_BATCH]), labels[index],
                                 reduction="none").tolist()
        for (i, j, neighbour), loss in zip(chunk, losses):
            if loss > clean_loss[i].item() and loss > best.get((i, j), (float("-inf"), ""))[0]:
                best[(i, j)] = (loss, neighbour)
    adversarial = [list(text_words) for text_words in words]
    for (i, j), (_, neighbour) in best.items():
        adversarial[i][j] = neighbour
    model.train(was_training)
    return [" ".join(text_words) for text_words in adversarial]


@register_defense("data-augmentation", modality="text")
class DataAugmentation:
    """Training on each batch plus its loss-maximising table substitutions (RanMASK's baseline)."""

    defaults = dict(TRAIN_DEFAULTS)

    def build(self, task, model_spec, config, context):
        if task.substitutions is None:
            raise UsageError(f"defense 'data-augmentation' substitutes table neighbours; task "
                             f"'{task.name}' has no substitution table (for the real text tasks "
                             f"set substitutions = \"jia\")")
        module = context.build_model(model_spec, task)
        if not hasattr(module, "classify"):
            raise UsageError(f"defense 'data-augmentation' needs a text model with classify(texts); "
                             f"{type(module).__name__} has none")

        def augmented_loss(model, texts, labels):
            copies = adversarial_copies(model, texts, labels, task.substitutions)
            return F.cross_entropy(model.classify(list(texts) + copies), torch.cat([labels, labels]))

        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, loss_fn=augmented_loss, description=f"data-augmentation {task.name}"))
        return ClassifierModel(module, task.num_classes)
