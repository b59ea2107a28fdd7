"""ASCC (Dong et al. 2021, "Towards robustness against natural language word substitutions"), the
white-box attack the CISS paper evaluates with.

Each word with substitutes in the task's table may become any convex combination of the embeddings
of itself and its substitutes. The combination weights are softmax(w); w starts Kaiming-normal and
takes `steps` Adam steps (ASCC's lr 10, weight decay 2e-5) on  -CE(true label) + sparse_weight *
entropy(weights), which drives each word's weights toward one substitute. The result is discretised
to text, each word becoming its heaviest substitute (itself included); with max_perturbed_fraction,
only the words whose weight moved furthest from themselves change.

The gradient runs through the defense's differentiable surrogate `defended.module` (the WhiteBoxText
contract: `tokenizer`, `embedding`, `forward_embeddings`); the harness judges the discretised text
with the deployed rule. Words are aligned to token positions by tokenizing each single-word
substitution: a candidate that does not change exactly one token (a multi-piece word in a WordPiece
vocabulary, a word beyond the model's max length) is left out of the hull.

Batching: examples are attacked `batch_size` at a time, every candidate of every word of a batch in
one forward pass per step. Each example's objective is its own (entropy averaged over its words), so
the batch size does not reweight it; ASCC's weight 15 on an entropy averaged over a whole batch of 32
is about 0.5 per example.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch.nn import functional as F

from benchmark.data.real import WORD
from benchmark.errors import UsageError
from benchmark.interfaces import AttackOutcome
from benchmark.registry import register_attack

NOT_CANDIDATE = -500.0  # ASCC's logit for padding entries of a word's candidate list


def count_words(text: str) -> int:
    return sum(1 for token in text.split() if re.search(r"\w", token))


@register_attack("ascc", modality="text", threat="word_sub")
class ASCC:
    """ASCC (Dong et al. 2021): worst case in the convex hull of substitute embeddings, discretised."""

    defaults = {"steps": 10, "lr": 10.0, "sparse_weight": 0.5, "max_perturbed_fraction": None,
                "batch_size": 32}
    threat = "word_sub"

    def __init__(self, config: dict):
        if config["steps"] < 1 or config["batch_size"] < 1:
            raise UsageError("attack 'ascc': steps and batch_size must be >= 1")
        if config["lr"] <= 0 or config["sparse_weight"] < 0:
            raise UsageError("attack 'ascc': lr must be > 0 and sparse_weight >= 0")
        fraction = config["max_perturbed_fraction"]
        if fraction is not None and not 0 < fraction <= 1:
            raise UsageError(f"attack 'ascc': max_perturbed_fraction must be in (0, 1], got {fraction}")
        self.config = config
        self.table = None

    def describe(self) -> str:
        c = self.config
        limit = (f"at most {c['max_perturbed_fraction']:.0%} of words changed"
                 if c["max_perturbed_fraction"] else "no limit on words changed")
        return (f"ASCC, white-box through the defense's differentiable surrogate: worst case in the "
                f"convex hull of each word's substitutes in the task's substitution table, "
                f"{c['steps']} Adam steps (lr {c['lr']:g}, entropy weight {c['sparse_weight']:g}), "
                f"discretised to the heaviest substitute, {limit}")

    def prepare(self, task, context):
        if task.substitutions is None:
            raise UsageError(f"attack 'ascc': task '{task.name}' has no substitution table")
        self.table = task.substitutions

    def run(self, model, xs, ys, seed):
        if self.table is None:
            raise UsageError("attack 'ascc' needs the task: call prepare(task, context) first")
        module = getattr(model, "module", None)
        if not all(hasattr(module, a) for a in ("tokenizer", "embedding", "forward_embeddings")):
            raise UsageError(f"{type(model).__name__} exposes no differentiable text surrogate "
                             f"(`module` with tokenizer, embedding, forward_embeddings: the "
                             f"WhiteBoxText contract); ASCC is white-box")
        size = self.config["batch_size"]
        outcomes = []
        for start in range(0, len(xs), size):
            outcomes += self.attack_batch(module, list(xs[start:start + size]),
                                          np.asarray(ys[start:start + size]), seed + start)
        return outcomes

    def substitution_sites(self, module, texts: list[str]):
        """Per text, the words with usable substitutes: (word index, token position, candidate
        words, candidate token ids), the original word's token id first."""
        words = [text.split() for text in texts]
        variants, owners = [], []  # owner: (text, word index, candidate)
        for b, tokens in enumerate(words):
            for i, word in enumerate(tokens):
                if not WORD.fullmatch(word):
                    continue
                for candidate in self.table[word.lower()]:
                    variants.append(" ".join(tokens[:i] + [candidate] + tokens[i + 1:]))
                    owners.append((b, i, candidate))
        input_ids, attention_mask = module.tokenizer(texts + variants)
        sites = [[] for _ in texts]
        if not variants:
            return input_ids[:len(texts)], attention_mask[:len(texts)], sites
        base = torch.tensor([b for b, _, _ in owners])
        differs = ((input_ids[len(texts):] != input_ids[base]) |
                   (attention_mask[len(texts):] != attention_mask[base]))
        single = differs.sum(dim=1) == 1
        positions = differs.int().argmax(dim=1)
        current = {}  # (text, word index) -> site
        for row, (b, i, candidate) in enumerate(owners):
            if not single[row]:
                continue
            position = int(positions[row])
            site = current.get((b, i))
            if site is None:
                site = current[(b, i)] = (i, position, [words[b][i]], [int(input_ids[b, position])])
                sites[b].append(site)
            if site[1] == position:
                site[2].append(candidate)
                site[3].append(int(input_ids[len(texts) + row, position]))
        return input_ids[:len(texts)], attention_mask[:len(texts)], sites

    def attack_batch(self, module, texts: list[str], ys: np.ndarray, seed: int) -> list[AttackOutcome]:
        c = self.config
        input_ids, attention_mask, sites = self.substitution_sites(module, texts)
        n_sites = max((len(s) for s in sites), default=0)
        if n_sites == 0:
            return [AttackOutcome(text, 0, 0.0, {"words_changed": 0, "sites": 0}) for text in texts]
        n_candidates = max(len(site[3]) for s in sites for site in s)
        batch = len(texts)
        candidate_ids = torch.zeros(batch, n_sites, n_candidates, dtype=torch.long)
        valid = torch.zeros(batch, n_sites, n_candidates, dtype=torch.bool)
        position = torch.zeros(batch, n_sites, dtype=torch.long)
        for b, text_sites in enumerate(sites):
            for s, (_, pos, _, ids) in enumerate(text_sites):
                candidate_ids[b, s, :len(ids)] = torch.tensor(ids)
                valid[b, s, :len(ids)] = True
                position[b, s] = pos
        site_valid = valid[:, :, 0]

        device = module.embedding.weight.device
        candidate_ids, valid, position, site_valid = (t.to(device) for t in
                                                      (candidate_ids, valid, position, site_valid))
        labels = torch.as_tensor(ys, device=device)
        attention_mask = attention_mask.to(device)
        n_words = torch.tensor([max(count_words(t), 1) for t in texts], device=device, dtype=torch.float)
        with torch.no_grad():
            embedded = module.embedding(input_ids.to(device))
            candidates = module.embedding(candidate_ids)  # (batch, sites, candidates, dim)
        index = position.unsqueeze(-1).expand(-1, -1, embedded.shape[-1])
        original_at_sites = embedded.gather(1, index)

        generator = torch.Generator().manual_seed(seed)
        std = math.sqrt(2.0 / (n_sites * n_candidates))  # ASCC's Kaiming-normal start
        w = (torch.randn(batch, n_sites, n_candidates, generator=generator) * std).to(device)
        w.requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=c["lr"], weight_decay=2e-5)
        for _ in range(c["steps"]):
            with torch.enable_grad():
                logits_w = torch.where(valid, w, torch.full_like(w, NOT_CANDIDATE))
                weights = torch.softmax(logits_w, dim=-1)
                combined = (weights.unsqueeze(-1) * candidates).sum(dim=2)
                delta = (combined - original_at_sites) * site_valid.unsqueeze(-1)
                adversarial = embedded.scatter_add(1, index, delta)
                logits = module.forward_embeddings(adversarial, attention_mask)
                cross_entropy = F.cross_entropy(logits, labels, reduction="none")
                entropy = -(weights * F.log_softmax(logits_w, dim=-1)).sum(-1) * site_valid
                loss = (-cross_entropy + c["sparse_weight"] * entropy.sum(1) / n_words).sum()
                (w.grad,) = torch.autograd.grad(loss, [w])  # leaves the model's .grad alone
            optimizer.step()

        with torch.no_grad():
            weights = torch.softmax(torch.where(valid, w, torch.full_like(w, NOT_CANDIDATE)), dim=-1)
        choice = weights.argmax(dim=-1).cpu()
        moved = (1 - weights[..., 0]).cpu()
        outcomes = []
        for b, (text, text_sites) in enumerate(zip(texts, sites)):
            changes = [(float(moved[b, s]), i, options[int(choice[b, s])])
                       for s, (i, _, options, _) in enumerate(text_sites) if choice[b, s] > 0]
            if c["max_perturbed_fraction"]:
                budget = math.ceil(c["max_perturbed_fraction"] * count_words(text))
                changes = sorted(changes, reverse=True)[:budget]
            tokens = text.split()
            for _, i, word in changes:
                tokens[i] = word
            outcomes.append(AttackOutcome(" ".join(tokens) if changes else text, c["steps"],
                                          len(changes) / max(count_words(text), 1),
                                          {"words_changed": len(changes), "sites": len(text_sites)}))
        return outcomes
