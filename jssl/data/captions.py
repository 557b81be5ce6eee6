"""Captions of a labelled image set, made from class names and templates (CLIP's prompts).

Fashion-MNIST has labels, not captions, so a caption is ``template.format(name)`` with a
template such as ``"a photo of a {}"`` and one of the class's synonyms (``"sneaker"``,
``"trainer"``, ``"running shoe"``). Colours are left out: the images are grey.

Splits of the captions (the "held-out" split of the image–text evaluation):

* training images are paired with ``TRAIN_TEMPLATES`` × synonyms, one caption drawn at
  random per example and step (``caption_table`` + the method's ``prepare``);
* the held-out split is the *test* images with ``HELD_OUT_TEMPLATES`` × synonyms: phrasings
  never seen in training (their new words keep their initial embeddings). Zero-shot
  classification and retrieval both use these held-out captions.

Tokenizer: a word-level vocabulary over every template and synonym (train and held-out), so
no word is unknown; lower-cased, split on whitespace (hyphenated words stay one token). Ids:
0 [PAD], 1 [BOS], 2 [EOS], 3 [UNK], then the words in sorted order. A caption is
``[BOS] words [EOS]`` right-padded with [PAD] to ``max_len``; a text tower pools at [EOS].
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")

#: Fashion-MNIST label -> synonyms (the first is the class's name in the dataset card).
FASHION_MNIST_CLASSES: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "top", "tee"),
    ("trousers", "pants", "slacks"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "open shoe", "summer sandal"),
    ("shirt", "button-up shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "bootie"),
)
CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of the {}",
    "a photo of the {}",
    "a grayscale photo of a {}",
    "a low resolution photo of a {}",
    "a cropped photo of the {}",
    "a close-up photo of a {}",
    "a product photo of a {}",
    "a {}",
)
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "a black and white photo of a {}",
    "a blurry photo of the {}",
    "a small image of a {}",
    "this is a {}",
    "a catalogue picture of the {}",
)


def fill(template: str, name: str) -> str:
    """``template.format(name)`` with "a" before a vowel turned into "an"."""
    if "{}" not in template:
        raise ValueError(f"template={template!r} has no '{{}}' for the class name; add one")
    return re.sub(r"\ba ([aeiou])", r"an \1", template.format(name))


def class_captions(classes: Sequence[Sequence[str]], templates: Sequence[str]) -> list[list[str]]:
    """Per class, every ``fill(template, synonym)`` (template-major order)."""
    return [[fill(t, name) for t in templates for name in names] for names in classes]


def words(text: str) -> list[str]:
    return text.lower().split()


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Word-level vocabulary: ``itos[i]`` is the word of id ``i`` (specials first)."""

    itos: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_len: int) -> np.ndarray:
        """int32 ``[max_len]``: [BOS] ids [EOS] then [PAD]s."""
        stoi = {w: i for i, w in enumerate(self.itos)}
        ids = [BOS, *(stoi.get(w, UNK) for w in words(text)), EOS]
        if len(ids) > max_len:
            raise ValueError(f"caption {text!r} needs {len(ids)} tokens > max_len={max_len}; "
                             f"raise config.captions.max_len")
        return np.asarray(ids + [PAD] * (max_len - len(ids)), np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` without specials."""
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS))


def build_vocabulary(classes: Sequence[Sequence[str]],
                     templates: Sequence[str] = TRAIN_TEMPLATES + HELD_OUT_TEMPLATES
                     ) -> Vocabulary:
    """Specials, then the sorted words of every caption of ``classes`` × ``templates``."""
    vocab = {w for caps in class_captions(classes, templates) for c in caps for w in words(c)}
    return Vocabulary(SPECIALS + tuple(sorted(vocab)))


def caption_table(vocab: Vocabulary, captions: Sequence[Sequence[str]], max_len: int
                  ) -> np.ndarray:
    """int32 ``[C, K, max_len]``: class c's captions tokenised, K = the longest list; a
    shorter list is repeated cyclically (uniform sampling over k is then only uniform over
    its captions when K is a multiple of its length)."""
    k = max(len(c) for c in captions)
    if min(len(c) for c in captions) == 0:
        raise ValueError("a class has no caption; give every class at least one name")
    return np.stack([np.stack([vocab.encode(caps[i % len(caps)], max_len) for i in range(k)])
                     for caps in captions])


def class_names(name: str) -> tuple[tuple[str, ...], ...]:
    """The synonym lists of dataset ``name`` (config.captions.classes)."""
    if name not in CLASS_NAMES:
        raise ValueError(f"config.captions.classes={name!r} is unknown; use one of "
                         f"{sorted(CLASS_NAMES)}")
    return CLASS_NAMES[name]
