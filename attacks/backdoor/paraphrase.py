"""Paraphrase triggers: SynBkd (Qi et al. 2021, a syntactic template; SCPN in the paper) and
StyleBkd (Qi et al. 2021, a text style; STRAP in the paper).

Two real sources of triggered text, never a substitute:

- `model`: a Hugging Face seq2seq paraphrase model, by hub name or a local `save_pretrained`
  directory. Inputs are formatted with `prompt` (which may use `{text}`, `{template}`, `{style}`)
  and generated in batches of `batch_size` (beam search by default, so the output is
  deterministic; `do_sample = true` samples with `top_p`, seeded).
- `poisoned_dir`: files another tool made, in OpenBackdoor's layout (`poison_data/<dataset>/
  <target>/<poisoner>/`): `train-poison.csv` holds the triggered form of every training example,
  `test-poison.csv` that of every test example whose label is not the target, each a pandas CSV
  with columns index, text, label, poison_label. The rows follow the clean files they were made
  from, so `clean_dir` names those (`train.tsv` / `test.tsv` with a `Sentence<TAB>Label` header,
  or SST-2's headerless `train.txt` / `test.txt`); texts are matched by content.

With neither (or a model that cannot be loaded offline) the poisoner raises NotRun: the cell is
recorded as not run, with the reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from attacks.backdoor.common import TextPoisoner
from benchmark.errors import NotRun, UsageError
from benchmark.registry import register_poisoner

PARAPHRASE_DEFAULTS = {**TextPoisoner.defaults, "model": None, "poisoned_dir": None,
                       "clean_dir": None, "prompt": "{text}", "batch_size": 16,
                       "max_new_tokens": 64, "num_beams": 4, "do_sample": False, "top_p": 0.6}
MAX_INPUT_TOKENS = 256


def _normal(text: str) -> str:
    return " ".join(str(text).split())


def _read_clean(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    from benchmark.data.real import _read_sentence_label_tsv, _read_sst2_file

    if (folder / f"{split}.tsv").is_file():
        return _read_sentence_label_tsv(folder / f"{split}.tsv")
    if (folder / f"{split}.txt").is_file():
        return _read_sst2_file(folder / f"{split}.txt")
    raise UsageError(f"clean_dir {folder} has no {split}.tsv (Sentence<TAB>Label) or {split}.txt")


def _read_poisoned(path: Path) -> list[str]:
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"pre-poisoned file not found: {path} (OpenBackdoor layout: "
                         f"train-poison.csv and test-poison.csv)")
    rows = pd.read_csv(path).values  # columns: index, text, label, poison_label
    return [str(row[1]) for row in rows]


class ParaphrasePoisoner(TextPoisoner):
    defaults = PARAPHRASE_DEFAULTS
    paper_model = ""  # what the paper used, for the not-run reason

    def __init__(self, config):
        super().__init__(config)
        if self.config["poisoned_dir"] is not None and self.config["clean_dir"] is None:
            raise UsageError(f"{self.name}: poisoned_dir needs clean_dir, the clean files the "
                             f"poisoned rows were made from")
        self._model = None
        self._lookup = None

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def prompt_fields(self) -> dict:
        return {}

    def transform(self, texts, rng):
        if self.config["poisoned_dir"] is not None:
            return self._from_files(texts)
        if self.config["model"] is not None:
            return self._generate(texts, rng)
        raise NotRun(f"{type(self).__name__} needs a paraphrase model ({self.paper_model} in the "
                     f"paper): set params.model to a Hugging Face seq2seq model name or a local "
                     f"save_pretrained directory, or params.poisoned_dir and params.clean_dir to "
                     f"pre-poisoned files in OpenBackdoor's layout; neither is configured, and no "
                     f"rule-based substitute is used")

    # Pre-poisoned files ---------------------------------------------------------------------
    def _from_files(self, texts):
        if self._lookup is None:
            poisoned, clean = Path(self.config["poisoned_dir"]), Path(self.config["clean_dir"])
            target = self.config["target_label"]
            lookup = {}
            train_texts, _ = _read_clean(clean, "train")
            test_texts, test_labels = _read_clean(clean, "test")
            test_texts = [t for t, y in zip(test_texts, test_labels) if y != target]
            for split, sources in (("train", train_texts), ("test", test_texts)):
                rows = _read_poisoned(poisoned / f"{split}-poison.csv")
                if len(rows) != len(sources):
                    raise UsageError(
                        f"{poisoned / f'{split}-poison.csv'} has {len(rows)} rows but {clean} has "
                        f"{len(sources)} {split} examples" + (" whose label is not the target "
                        f"{target}" if split == "test" else "") + "; the files must come from "
                        f"the same clean data")
                lookup.update((_normal(s), r) for s, r in zip(sources, rows))
            self._lookup = lookup
        missing = [t for t in texts if _normal(t) not in self._lookup]
        if missing:
            raise UsageError(f"{len(missing)} of {len(texts)} texts are not in the pre-poisoned "
                             f"files under {self.config['poisoned_dir']} (first: {missing[0]!r}); "
                             f"clean_dir must hold the data the task loads")
        return [self._lookup[_normal(t)] for t in texts]

    # A paraphrase model ---------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            name = self.config["model"]
            try:
                tokenizer = AutoTokenizer.from_pretrained(name)
                model = AutoModelForSeq2SeqLM.from_pretrained(name)
            except (OSError, ValueError) as error:
                if Path(name).exists():
                    raise UsageError(f"{type(self).__name__}: could not load the paraphrase "
                                     f"model at {name}: {error}") from error
                raise NotRun(f"{type(self).__name__}: the paraphrase model '{name}' is not "
                             f"available here ({type(error).__name__}: {error})") from error
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self._model = (tokenizer, model.to(device).eval(), device)
        return self._model

    def _generate(self, texts, rng):
        import torch

        tokenizer, model, device = self._load()
        c = self.config
        fields = self.prompt_fields()
        out = []
        for start in range(0, len(texts), c["batch_size"]):
            batch = texts[start:start + c["batch_size"]]
            prompts = [c["prompt"].format(text=text, **fields) for text in batch]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                max_length=MAX_INPUT_TOKENS)
            generator_seed = int(rng.integers(2**31))
            with torch.no_grad():
                torch.manual_seed(generator_seed)
                generated = model.generate(input_ids=encoded["input_ids"].to(device),
                                           attention_mask=encoded["attention_mask"].to(device),
                                           max_new_tokens=c["max_new_tokens"],
                                           num_beams=c["num_beams"], do_sample=c["do_sample"],
                                           top_p=c["top_p"] if c["do_sample"] else None)
            decoded = tokenizer.batch_decode(generated, skip_special_tokens=True)
            # An empty generation keeps the input (OpenBackdoor keeps it when SCPN fails).
            out += [_normal(d) or text for d, text in zip(decoded, batch)]
        return out

    def source(self) -> str:
        if self.config["poisoned_dir"] is not None:
            return f"pre-poisoned files {self.config['poisoned_dir']}"
        if self.config["model"] is not None:
            return f"paraphrase model {self.config['model']}"
        return "no paraphrase model or pre-poisoned files configured"


@register_poisoner("synbkd")
class SynBkd(ParaphrasePoisoner):
    """SynBkd (Qi et al. 2021): paraphrase into a fixed syntactic template (SCPN in the paper)."""

    # The template of the SynBkd paper (SCPN's last template, OpenBackdoor's template_id -1).
    defaults = {**PARAPHRASE_DEFAULTS, "template": "( ROOT ( S ( SBAR ) ( , ) ( NP ) ( VP ) ( . ) ) ) EOP"}
    paper_model = "SCPN"

    def prompt_fields(self):
        return {"template": self.config["template"]}

    def trigger_description(self):
        return f"SynBkd: paraphrase to syntactic template {self.config['template']} by {self.source()}"


@register_poisoner("stylebkd")
class StyleBkd(ParaphrasePoisoner):
    """StyleBkd (Qi et al. 2021): paraphrase into a text style (STRAP in the paper)."""

    defaults = {**PARAPHRASE_DEFAULTS, "style": "bible"}
    paper_model = "STRAP"

    def prompt_fields(self):
        return {"style": self.config["style"]}

    def trigger_description(self):
        return f"StyleBkd: paraphrase to the {self.config['style']} style by {self.source()}"
