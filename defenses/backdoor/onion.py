"""ONION (Qi, Chen, Li, Yao, Liu and Sun, "ONION: A Simple and Effective Defense Against Textual
Backdoor Attacks", EMNLP 2021; OpenBackdoor's ONIONDefender): an inserted trigger word is an outlier
that a language model finds unlikely, so deleting it lowers the text's perplexity. Every test input,
clean or triggered, is corrected before the (backdoored) model classifies it.

- Suspicion score of the i-th word of a text w_1 .. w_n: f_i = p_0 - p_i, with p_0 the perplexity of
  the whole text and p_i that of the text without w_i.
- Every word with f_i larger than `threshold` (OpenBackdoor's default 0) is removed; a text of one
  word is left as it is (OpenBackdoor). Words are whitespace-separated and keep their case.
- The base model is trained as `vanilla` on the whole (poisoned) training split: ONION holds out no
  clean data.

Language model (`language_model`, named in the row's parameters; the suites name the row after it):

- "kneser-ney" (the default, offline): a word `ngram_order`-gram model with interpolated
  Kneser-Ney smoothing (Chen and Goodman 1998, one absolute discount `discount`), fitted here on the
  task's clean training texts (the split's texts before poisoning, `clean_xs`: a stand-in for the
  clean web text GPT-2 learned from, without the trigger), lower-cased; words seen once become
  <unk>, whose probability is shared equally by that many unknown word types when a text is
  scored (an unseen word, a trigger among them, is as unlikely as a word seen once). No pretrained causal language model is available offline on this machine, so this is not
  GPT-2 ONION: its perplexities come from a few thousand sentences of the task's own domain.
- any other value: a Hugging Face causal language model by hub name or local folder through
  transformers, e.g. "gpt2", the paper's (GPT-2 small); the text is scored after the model's
  beginning-of-text token, so every token is predicted. Loading by name needs a reachable hub.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
import torch

from benchmark.defended import ClassifierModel
from benchmark.errors import UsageError
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
KNESER_NEY = "kneser-ney"


class KneserNeyLM:
    """Interpolated Kneser-Ney word n-gram model: the highest order uses counts, the lower orders
    continuation counts (the number of distinct words seen before an n-gram), each order discounted
    by `discount` and interpolated with the next lower one, down to the uniform distribution over
    the vocabulary (the known words, <unk> and </s>)."""

    def __init__(self, texts: Sequence[str], order: int = 3, discount: float = 0.75):
        if order < 1:
            raise UsageError(f"onion: ngram_order must be >= 1, got {order}")
        if not 0 < discount < 1:
            raise UsageError(f"onion: discount must be in (0, 1), got {discount}")
        self.order, self.discount = order, discount
        words = Counter(word for text in texts for word in text.lower().split())
        self.vocabulary = {word for word, count in words.items() if count > 1}
        self.unknown_types = max(len(words) - len(self.vocabulary), 1)
        self.vocabulary_size = len(self.vocabulary) + 2  # with <unk> and </s>
        # counts[k][(history, word)] for k-grams (history of k - 1 words): counts at the highest
        # order, continuation counts below it.
        highest = Counter(gram for text in texts for gram in self.ngrams(text.lower().split(), order))
        self.counts = {order: highest}
        for k in range(order - 1, 0, -1):
            self.counts[k] = Counter((history[1:], word) for history, word in self.counts[k + 1])
        self.totals, self.types = {}, {}
        for k, counts in self.counts.items():
            totals, types = defaultdict(int), defaultdict(int)
            for (history, _), count in counts.items():
                totals[history] += count
                types[history] += 1
            self.totals[k], self.types[k] = dict(totals), dict(types)

    def ngrams(self, words: list[str], order: int):
        """(history, word) for every word of the text and </s>, the history padded with <s>."""
        padded = [BOS] * (order - 1) + [w if w in self.vocabulary else UNK for w in words] + [EOS]
        for end in range(order - 1, len(padded)):
            yield tuple(padded[end - order + 1:end]), padded[end]

    def probability(self, word: str, history: tuple) -> float:
        probability = 1.0 / self.vocabulary_size
        for k in range(1, self.order + 1):
            context = history[len(history) - (k - 1):] if k > 1 else ()
            total = self.totals[k].get(context)
            if total is None:
                break  # an unseen history: the lower orders' estimate stands
            count = self.counts[k].get((context, word), 0)
            probability = (max(count - self.discount, 0.0)
                           + self.discount * self.types[k][context] * probability) / total
        return probability

    def word_probability(self, word: str, history: tuple) -> float:
        """The probability of this word: <unk>'s mass is shared by the unknown word types (as many
        as the training words seen once), so an unseen word is as unlikely as a rare one."""
        probability = self.probability(word, history)
        return probability / self.unknown_types if word == UNK else probability

    def perplexities(self, texts: Sequence[str]) -> np.ndarray:
        """exp of the mean negative log-probability of each text's words and its </s>."""
        result = []
        for text in texts:
            logs = [math.log(self.word_probability(word, history))
                    for history, word in self.ngrams(text.lower().split(), self.order)]
            result.append(math.exp(-sum(logs) / len(logs)))
        return np.asarray(result)


class CausalLM:
    """A transformers causal language model's perplexity of each text, scored in batches."""

    def __init__(self, name_or_path: str, batch_size: int, device: torch.device):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            self.model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
        except (OSError, ValueError) as error:  # not found, or not a valid hub name offline
            raise UsageError(f"onion: language model {name_or_path!r} could not be loaded ({error}); "
                             f"offline, pass a folder saved with save_pretrained, or use "
                             f"language_model = {KNESER_NEY!r}") from error
        self.prefix = self.tokenizer.bos_token or self.tokenizer.eos_token or ""
        self.batch_size = batch_size

    @torch.no_grad()
    def perplexities(self, texts: Sequence[str]) -> np.ndarray:
        device = self.model.device
        result = []
        for start in range(0, len(texts), self.batch_size):
            rows = [self.tokenizer(self.prefix + text)["input_ids"][:self.model.config.max_position_embeddings]
                    for text in texts[start:start + self.batch_size]]
            width = max(len(row) for row in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")
            predicted = mask[:, 1:].to(device).float()
            mean = (losses * predicted).sum(dim=1) / predicted.sum(dim=1).clamp(min=1)
            result.extend(torch.exp(mean).cpu().tolist())
        return np.asarray(result)


def remove_outlier_words(text: str, language_model, threshold: float) -> str:
    """The text without the words whose removal lowers its perplexity by more than `threshold`."""
    words = text.split()
    if len(words) <= 1:
        return text
    candidates = [text] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    perplexities = language_model.perplexities(candidates)
    suspicion = perplexities[0] - perplexities[1:]
    return " ".join(word for word, score in zip(words, suspicion) if not score > threshold)


class OnionModel(ClassifierModel):
    """The base classifier applied to each input after its outlier words are removed."""

    def __init__(self, module, num_classes: int, language_model, threshold: float):
        super().__init__(module, num_classes)
        self.language_model = language_model
        self.threshold = threshold

    def correct(self, xs) -> list[str]:
        return [remove_outlier_words(x, self.language_model, self.threshold) for x in xs]

    def probs(self, xs) -> np.ndarray:
        return super().probs(self.correct(xs))


@register_defense("onion", modality="text", backdoor=True)
class Onion:
    """ONION: delete the words whose removal lowers a language model's perplexity, then classify."""

    defaults = {**TRAIN_DEFAULTS, "threshold": 0.0, "language_model": KNESER_NEY, "ngram_order": 3,
                "discount": 0.75, "lm_batch_size": 32}
    # The language model only corrects test inputs: entries differing in it share trained weights.
    inference_keys = ("threshold", "language_model", "ngram_order", "discount", "lm_batch_size")

    def build(self, task, model_spec, config, context):
        if config["lm_batch_size"] < 1:
            raise UsageError(f"onion: lm_batch_size must be >= 1, got {config['lm_batch_size']}")
        if config["language_model"] == KNESER_NEY:
            language_model = KneserNeyLM(getattr(task.train, "clean_xs", task.train.xs),
                                         config["ngram_order"], config["discount"])
        else:
            language_model = CausalLM(config["language_model"], config["lm_batch_size"],
                                      context.device)
        module = context.build_model(model_spec, task)
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, description=f"onion {task.name}"))
        return OnionModel(module, task.num_classes, language_model, config["threshold"])
