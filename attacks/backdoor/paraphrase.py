"""Paraphrase triggers: SynBkd (Qi et al. 2021, a syntactic template; SCPN in the paper) and
StyleBkd (Qi et al. 2021, a text style; STRAP in the paper).

Two real sources of triggered text, never a substitute:

- `model`: a Hugging Face seq2seq paraphrase model, by hub name or a local `save_pretrained`
  directory. Inputs are formatted with `prompt` (which may use `{text}`, `{template}`, `{style}`)
  and generated in batches of `batch_size` (beam search by default, so the output is
  deterministic; `do_sample = true` samples with `top_p`, seeded).
- `poisoned_dir`: files another tool made, in OpenBackdoor's layout (`poison_data/<dataset>/
  <target>/<poisoner>/`), for the SCPN and STRAP outputs that cannot be generated offline. Each
  is a pandas CSV with columns index, text, label, poison flag. `train-poison.csv` holds the
  triggered form of every row of `train-clean.csv`, row by row; `test-poison.csv` that of every
  row of `test-clean.csv` whose label is not the target, in order. The task's texts are matched to
  the clean rows by content (`match_key`: PTB bracket tokens such as `-lrb-` read as the
  brackets, whitespace ignored, since OpenBackdoor writes `(sci-fi)` where SST-2's files have
  `-lrb- sci-fi -rrb-`); a training text takes its triggered form from `train-poison.csv`, a test
  text from `test-poison.csv`, written back in the task's bracket convention. Which training rows
  are poisoned is still the suite's rule (`rate`, `label_mode`, `seed`). Every text must match: one
  without a match fails the cell with the count, so a run never poisons fewer texts than it says.

With neither (or a model that cannot be loaded offline) the poisoner raises NotRun: the cell is
recorded as not run, with the reason.
"""
from __future__ import annotations

import hashlib

from pathlib import Path

import numpy as np

from attacks.backdoor.common import TextPoisoner
from benchmark.backdoor import poison_split
from benchmark.errors import NotRun, UsageError
from benchmark.registry import register_poisoner

PARAPHRASE_DEFAULTS = {**TextPoisoner.defaults, "model": None, "poisoned_dir": None,
                       "prompt": "{text}", "batch_size": 16,
                       "max_new_tokens": 64, "num_beams": 4, "do_sample": False, "top_p": 0.6}
MAX_INPUT_TOKENS = 256


def _normal(text: str) -> str:
    return " ".join(str(text).split())


# Penn Treebank bracket tokens (SST-2's files) and the brackets OpenBackdoor's files write instead.
PTB_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


def match_key(text: str) -> str:
    """What two copies of a text share across bracket conventions and tokenisation: PTB bracket
    tokens read as the brackets, whitespace dropped."""
    text = str(text)
    for token, bracket in PTB_BRACKETS.items():
        text = text.replace(token, bracket)
    return "".join(text.split())


def as_ptb(text: str) -> str:
    """`text` with brackets written as PTB tokens, space-separated (SST-2's convention)."""
    for token, bracket in PTB_BRACKETS.items():
        text = text.replace(bracket, f" {token} ")
    return _normal(text)


def _read_openbackdoor_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of an OpenBackdoor CSV (columns: index, text, label, poison flag)."""
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"pre-poisoned file not found: {path} (OpenBackdoor layout: "
                         f"train-clean.csv, train-poison.csv, test-clean.csv, test-poison.csv)")
    # keep_default_na=False: a text such as "NA" or "null" stays text
    frame = pd.read_csv(path, keep_default_na=False, dtype={"0": str})
    if list(frame.columns) != ["Unnamed: 0", "0", "1", "2"]:
        raise UsageError(f"{path}: expected OpenBackdoor's header ',0,1,2' (index, text, label, "
                         f"poison flag), found {','.join(map(str, frame.columns))}")
    return [str(t) for t in frame["0"]], frame["1"].to_numpy(dtype=np.int64)


def read_poisoned_pairs(folder: Path, split: str, target: int) -> dict[str, str]:
    """match_key(clean text) -> triggered text, for `split` ("train" or "test") of an OpenBackdoor
    folder made for target label `target` (the first row wins for a text that occurs twice)."""
    clean, clean_labels = _read_openbackdoor_csv(folder / f"{split}-clean.csv")
    poisoned, poisoned_labels = _read_openbackdoor_csv(folder / f"{split}-poison.csv")
    if len(poisoned_labels) and not (poisoned_labels == target).all():
        raise UsageError(f"{folder / f'{split}-poison.csv'} labels its rows "
                         f"{sorted(set(poisoned_labels.tolist()))}, not the target label {target}: "
                         f"these files were made for another target")
    if split == "test":  # only the non-target rows are triggered
        clean = [t for t, y in zip(clean, clean_labels) if y != target]
    if len(poisoned) != len(clean):
        raise UsageError(f"{folder / f'{split}-poison.csv'} has {len(poisoned)} rows but "
                         f"{split}-clean.csv has {len(clean)}" + (
                             f" whose label is not the target {target}" if split == "test" else "")
                         + "; the two must come from the same poisoning run")
    pairs: dict[str, str] = {}
    for text, triggered in zip(clean, poisoned):
        pairs.setdefault(match_key(text), triggered)
    return pairs


class ParaphrasePoisoner(TextPoisoner):
    defaults = PARAPHRASE_DEFAULTS
    paper_model = ""  # what the paper used, for the not-run reason

    def __init__(self, config):
        super().__init__(config)
        self._model = None
        self._pairs: dict[str, dict[str, str]] = {}

    def prompt_fields(self) -> dict:
        return {}

    def poison(self, train, rate, target_label, seed):
        if self.config["poisoned_dir"] is None:
            return super().poison(train, rate, target_label, seed)
        return poison_split(train, rate, target_label, self.config["label_mode"], seed,
                            lambda texts, _seed: self._from_files(list(texts), "train"))

    def transform(self, texts, rng):
        """Triggered test texts (training texts go through `poison`)."""
        if self.config["poisoned_dir"] is not None:
            return self._from_files(texts, "test")
        if self.config["model"] is not None:
            return self._generate(texts, rng)
        raise NotRun(f"{type(self).__name__} needs a paraphrase model ({self.paper_model} in the "
                     f"paper): set params.model to a Hugging Face seq2seq model name or a local "
                     f"save_pretrained directory, or params.poisoned_dir to pre-poisoned files in "
                     f"OpenBackdoor's layout; neither is configured for this task, and no "
                     f"rule-based substitute is used")

    # Pre-poisoned files ---------------------------------------------------------------------
    def data_checksums(self) -> dict:
        """The pre-poisoned files by content: a file replaced in place makes new poisoned splits."""
        if self.config["poisoned_dir"] is None:
            return {}
        folder = Path(self.config["poisoned_dir"])
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.glob("*.csv"))}

    def _from_files(self, texts: list[str], split: str) -> list[str]:
        if split not in self._pairs:
            self._pairs[split] = read_poisoned_pairs(Path(self.config["poisoned_dir"]), split,
                                                     self.config["target_label"])
        pairs = self._pairs[split]
        missing = [t for t in texts if match_key(t) not in pairs]
        if missing:
            raise UsageError(f"{len(missing)} of {len(texts)} {split} texts have no match in "
                             f"{split}-clean.csv under {self.config['poisoned_dir']} (first: "
                             f"{missing[0]!r}); the pre-poisoned files must come from the data "
                             f"the task loads")
        return [as_ptb(pairs[match_key(t)]) if any(token in t for token in PTB_BRACKETS)
                else _normal(pairs[match_key(t)]) for t in texts]

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
            # the folder's last parts (<dataset>/<target>/<poisoner>), never a local path
            where = "/".join(Path(self.config["poisoned_dir"]).parts[-3:])
            return (f"OpenBackdoor's pre-poisoned files {where} (training texts from "
                    f"train-poison.csv, test texts from test-poison.csv, matched by content; a "
                    f"text without a match fails the cell)")
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
