"""Interval bound propagation (Gowal et al. 2018; Jia et al. 2019) through the project's TextCNN.

Written here rather than taken from auto_LiRPA (0.3 does not run on torch 2.13). Bounds travel as
(value, lower, upper): `value` is the exact, dropout-free forward pass of the unperturbed text, the
bounds enclose every text whose words are drawn from their substitution boxes. Affine layers use the
centre/radius form, ReLU and max-pooling are monotone; the pooling mirrors TextCNN.forward_embeddings
window for window, so the enclosure is exact arithmetic on the same function.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.models.text import TextCNN


class Bounds(NamedTuple):
    value: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def require_textcnn(module, defense: str) -> TextCNN:
    if not isinstance(module, TextCNN):
        raise UsageError(f"defense '{defense}' propagates interval bounds through the 'textcnn' "
                         f"model; set model = \"textcnn\" for this task")
    return module


def affine(bounds: Bounds, layer) -> Bounds:
    """A linear or 1-d convolution layer applied to value and bounds (centre/radius form)."""
    centre = (bounds.upper + bounds.lower) / 2
    radius = (bounds.upper - bounds.lower) / 2
    if isinstance(layer, nn.Linear):
        mid = layer(centre)
        spread = radius @ layer.weight.abs().t()
    else:
        mid = layer(centre)
        spread = nn.functional.conv1d(radius, layer.weight.abs(), None, layer.stride, layer.padding,
                                      layer.dilation, layer.groups)
    return Bounds(layer(bounds.value), mid - spread, mid + spread)


def candidate_matrix(tokenizer, table) -> torch.Tensor:
    """(vocabulary, width) ids: row v is v followed by the ids of its table substitutes that are in the
    vocabulary, padded with v (so a box over a row is a box over the word's substitution set)."""
    rows = []
    for index, word in enumerate(tokenizer.itos):
        subs = table[word] if table is not None else []
        rows.append([index] + [tokenizer.stoi[s] for s in subs if s in tokenizer.stoi])
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)


def small_embeddings(module, std: float) -> None:
    """Re-initialise a from-scratch embedding at N(0, std^2): at nn.Embedding's unit scale the boxes
    over substitution sets start wide and Adam needs far more steps to pull substitutes together
    than the ramps leave (on toy-sentiment the model then falls back on words that are not in the
    table). 0 keeps the model's own initialisation (pretrained vectors, for instance)."""
    if std > 0:
        torch.nn.init.normal_(module.embedding.weight, std=std)
        with torch.no_grad():
            module.embedding.weight[module.embedding.padding_idx].zero_()


def substitution_boxes(embedding: nn.Embedding, candidates: torch.Tensor, input_ids: torch.Tensor,
                       eps: float = 1.0) -> Bounds:
    """Per-position boxes over the embeddings of each word and its substitutes. `candidates` is a
    (vocabulary, width) id matrix whose row v lists v and its substitutes, padded with v itself.
    `eps` in [0, 1] shrinks each box towards the word's own embedding (Jia et al.'s epsilon)."""
    value = embedding(input_ids)
    options = embedding(candidates[input_ids])  # (batch, length, width, dim)
    lower, upper = options.amin(dim=2), options.amax(dim=2)
    if eps != 1.0:
        lower = value + eps * (lower - value)
        upper = value + eps * (upper - value)
    return Bounds(value, lower, upper)


def textcnn_features(model: TextCNN, boxes: Bounds, attention_mask: torch.Tensor) -> Bounds:
    """Bounds on TextCNN's pooled features (the input of its output layer), dropout-free."""
    mask = attention_mask.unsqueeze(-1).to(boxes.value.dtype)
    parts = [b * mask for b in boxes]
    width = max(model.kernel_sizes)
    if parts[0].shape[1] < width:
        parts = [nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts]
    x = Bounds(*(p.transpose(1, 2) for p in parts))
    lengths = attention_mask.sum(dim=1)
    pooled = []
    for conv, k in zip(model.convolutions, model.kernel_sizes):
        out = affine(x, conv)
        valid = model.valid_windows(lengths, k, x.value.shape[2])[:, None, :]
        pooled.append(Bounds(*(torch.relu(t).masked_fill(~valid, 0.0).amax(dim=2) for t in out)))
    return Bounds(*(torch.cat(pieces, dim=1) for pieces in zip(*pooled)))


def margin_lower_bounds(features: Bounds, output: nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """Lower bounds of logit[label] - logit[c] for every class c (0 at c = label), computed through the
    output layer in one affine step (tighter than subtracting logit bounds)."""
    weight = output.weight[labels][:, None, :] - output.weight[None, :, :]  # (batch, classes, features)
    bias = output.bias[labels][:, None] - output.bias[None, :]
    centre = (features.upper + features.lower) / 2
    radius = (features.upper - features.lower) / 2
    return (torch.einsum("bcf,bf->bc", weight, centre) - torch.einsum("bcf,bf->bc", weight.abs(), radius)
            + bias)


def worst_case_logits(margins: torch.Tensor) -> torch.Tensor:
    """Logits whose cross-entropy at the label bounds the worst case over the boxes: -margin lower
    bounds (the label's own entry is 0)."""
    return -margins
