"""Text data: the Debian ``fortunes`` corpus, its SentencePiece tokenizer and packed token rows.

    config.data.name          "fortunes" (offline corpus) or a TFDS text dataset (``text_tfds``)
    config.data.modality      "text" (``jssl.data.inputs.train_loader`` dispatches here)
    config.data.root          /usr/share/games/fortunes: one file per category, entries
                              separated by lines holding only ``%``
    config.data.categories    None (every category) or a tuple of file names
    config.data.test_fraction held-out fortunes (a seeded split *by fortune*, ``split_seed``)
    config.data.vocab_size    SentencePiece pieces (exactly: training fails if too large)
    config.data.seq_len       tokens per row
    config.data.packing       "nsp_pairs" (BERT), "documents" (one fortune a row),
                              "contiguous" (RoBERTa FULL-SENTENCES / GPT stream)
    config.data.cache_dir     where tokenizers are cached (None: ~/.cache/jssl/text)

Corpus reading skips ``.dat`` index files, directories (``off/``: offensive fortunes) and
symlinks (the ``.u8`` names link to the same files); files are deduplicated by content too.

Token ids: 0 [PAD], 1 [UNK], 2 [CLS] (also BOS), 3 [SEP] (also EOS / document end), 4 [MASK],
then ``num_sentinels`` T5 sentinels counting down (``<extra_id_0>`` has the highest id,
``sentinel_start``), then the learned pieces. The tokenizer is trained on the *training* split
only (unigram LM, one thread, so it is deterministic) and cached under a hash of its inputs;
text methods copy it into the workdir (``tokenizer.model``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jssl.data.pipeline import ArraySource, make_loader

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
DEFAULT_ROOT = "/usr/share/games/fortunes"


def sentinel_start(num_sentinels: int) -> int:
    """Id of ``<extra_id_0>``; sentinel i is ``sentinel_start - i`` (``t5_span_corruption``)."""
    return MASK + num_sentinels


def special_ids(num_sentinels: int = 0) -> tuple[int, ...]:
    """Every reserved id but [MASK]: never masked, never drawn as a random replacement."""
    return tuple(i for i in range(MASK + num_sentinels + 1) if i != MASK)


# ------------------------------------------------------------------------------------- corpus
def read_fortunes(root: str | os.PathLike = DEFAULT_ROOT, categories: tuple[str, ...] | None = None,
                  ) -> tuple[list[str], list[int], list[str]]:
    """(texts, category index per text, category names) of the corpus, files in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"config.data.root={str(root)!r} is not a directory; install "
                                "Debian's fortunes packages or point root at a fortunes folder")
    files = [p for p in sorted(root.iterdir())
             if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")]
    if categories is not None:
        missing = sorted(set(categories) - {p.name for p in files})
        if missing:
            raise ValueError(f"config.data.categories names {missing}, not files of {root}; "
                             f"use some of {[p.name for p in files]}")
        files = [p for p in files if p.name in categories]
    texts, labels, names, seen = [], [], [], set()
    for path in files:
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:  # the same file under two names
            continue
        seen.add(digest)
        entries = [e.strip() for e in _split_entries(raw.decode("utf-8", errors="replace"))]
        entries = [e for e in entries if e]
        if not entries:
            continue
        texts += entries
        labels += [len(names)] * len(entries)
        names.append(path.name)
    if not texts:
        raise ValueError(f"no fortunes found under {root}")
    return texts, labels, names


def _split_entries(text: str) -> list[str]:
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return entries


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted indices: a seeded permutation, the first ``test_fraction`` held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"config.data.test_fraction={test_fraction} must be in (0, 1); "
                         "use e.g. 0.1")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(test_fraction * n))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# ---------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], path: str | os.PathLike, vocab_size: int,
                    num_sentinels: int = 0, model_type: str = "unigram"):
    """Train SentencePiece on ``texts``, write it atomically to ``path``, return the processor."""
    import sentencepiece as spm

    controls = ["[MASK]"] + [f"<extra_id_{i}>" for i in reversed(range(num_sentinels))]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, num_threads=1,
            seed_sentencepiece_size=100_000,
            max_sentence_length=1 << 16, pad_id=PAD, unk_id=UNK, bos_id=CLS, eos_id=SEP,
            pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]",
            control_symbols=controls, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"SentencePiece could not train vocab_size={vocab_size} on "
                         f"{len(texts)} texts ({e}); lower config.data.vocab_size") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, path)
    return load_tokenizer(path)


def load_tokenizer(path: str | os.PathLike):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


# ------------------------------------------------------------------------------------ corpus+
@dataclasses.dataclass
class TextCorpus:
    """The split corpus and its tokenizer; ``*_ids`` are int32 token arrays, one per fortune."""

    tokenizer: Any
    tokenizer_path: Path
    categories: list[str]
    train_ids: list[np.ndarray]
    test_ids: list[np.ndarray]
    train_labels: np.ndarray
    test_labels: np.ndarray


def load_corpus(data: Any) -> TextCorpus:
    """Read, split, tokenize (training the tokenizer on first use) the corpus of ``data``."""
    cats = data.get("categories")
    key = json.dumps([str(data.get("root", DEFAULT_ROOT)), None if cats is None else list(cats),
                      float(data.test_fraction), int(data.split_seed), int(data.vocab_size),
                      int(data.get("num_sentinels", 0)), data.get("model_type", "unigram"),
                      data.get("cache_dir")])
    return _load_corpus(key)


@functools.lru_cache(maxsize=4)
def _load_corpus(key: str) -> TextCorpus:
    root, cats, test_fraction, seed, vocab, sentinels, model_type, cache = json.loads(key)
    texts, labels, names = read_fortunes(root, None if cats is None else tuple(cats))
    tr, te = split_indices(len(texts), test_fraction, seed)
    train_texts = [texts[i] for i in tr]
    digest = hashlib.sha256("\x00".join([key, *train_texts]).encode()).hexdigest()[:16]
    cache = Path(cache or Path.home() / ".cache" / "jssl" / "text")
    path = cache / f"fortunes-{model_type}-{vocab}-{digest}.model"
    tok = (load_tokenizer(path) if path.exists()
           else train_tokenizer(train_texts, path, vocab, sentinels, model_type))
    encode = lambda idx: [np.asarray(x, np.int32) for x in tok.encode([texts[i] for i in idx])]  # noqa: E731
    labels = np.asarray(labels, np.int32)
    return TextCorpus(tok, path, names, encode(tr), encode(te), labels[tr], labels[te])


# ------------------------------------------------------------------------------------ packing
def pack_documents(docs: list[np.ndarray], seq_len: int, cls: bool = True) -> np.ndarray:
    """One fortune a row: ``[CLS] ids [SEP]`` (or ``ids [SEP]``), truncated, PAD-padded."""
    out = np.full((len(docs), seq_len), PAD, np.int32)
    body = seq_len - 1 - int(cls)
    for i, d in enumerate(docs):
        row = ([CLS] if cls else []) + list(d[:body]) + [SEP]
        out[i, :len(row)] = row
    return out


def pack_contiguous(docs: list[np.ndarray], seq_len: int, cls: bool = True) -> np.ndarray:
    """The fortunes as one stream ``d0 [SEP] d1 [SEP] ...`` cut into consecutive rows (each
    starting with [CLS] if ``cls``); the last row is PAD-padded. RoBERTa's FULL-SENTENCES
    (documents run on across rows, separated by [SEP]) and GPT's training stream."""
    stream = np.concatenate([np.append(d, SEP) for d in docs]).astype(np.int32)
    body = seq_len - int(cls)
    rows = -(-len(stream) // body)
    out = np.full((rows, seq_len), PAD, np.int32)
    chunks = np.pad(stream, (0, rows * body - len(stream)), constant_values=PAD)
    out[:, int(cls):] = chunks.reshape(rows, body)
    if cls:
        out[:, 0] = CLS
    return out


def pack_nsp_pairs(docs: list[np.ndarray], seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """BERT pairs ``[CLS] A [SEP] B [SEP]``, made once (static, as ``create_pretraining_data``).

    Each fortune of >= 2 tokens is cut at a uniform point into A | B. With probability 1/2 B is
    replaced by the second part of another random fortune (``nsp_label`` 1 = NotNext, else 0 =
    IsNext). Pairs too long keep A's tail and B's head (the junction NSP looks at).
    Returns ``tokens``, ``segment_ids`` (0 for [CLS] A [SEP], 1 for B [SEP]) and ``nsp_label``.
    """
    rng = np.random.default_rng(seed)
    usable = [d for d in docs if len(d) >= 2]
    if len(usable) < 2:
        raise ValueError("pack_nsp_pairs needs at least 2 fortunes of >= 2 tokens")
    n = len(usable)
    tokens = np.full((n, seq_len), PAD, np.int32)
    segments = np.zeros((n, seq_len), np.int32)
    labels = np.zeros((n,), np.int32)
    budget = seq_len - 3
    for i, d in enumerate(usable):
        cut = rng.integers(1, len(d))
        a, b = d[:cut], d[cut:]
        if rng.random() < 0.5:
            j = (i + rng.integers(1, n)) % n
            other = usable[j]
            b, labels[i] = other[rng.integers(1, len(other)):], 1
        while len(a) + len(b) > budget:
            a, b = (a[1:], b) if len(a) > len(b) else (a, b[:-1])
        row = [CLS, *a, SEP, *b, SEP]
        tokens[i, :len(row)] = row
        segments[i, len(a) + 2:len(row)] = 1
    return {"tokens": tokens, "segment_ids": segments, "nsp_label": labels}


def pack(docs: list[np.ndarray], data: Any, seed: int) -> dict[str, np.ndarray]:
    """Rows of ``docs`` for ``data.packing`` (fields of the training batch)."""
    packing, seq_len, cls = data.packing, int(data.seq_len), bool(data.get("cls", True))
    if packing == "nsp_pairs":
        return pack_nsp_pairs(docs, seq_len, seed)
    if packing == "documents":
        return {"tokens": pack_documents(docs, seq_len, cls)}
    if packing == "contiguous":
        return {"tokens": pack_contiguous(docs, seq_len, cls)}
    raise ValueError(f"config.data.packing={packing!r}; use nsp_pairs, documents or contiguous")


def train_loader(config: Any, *, process_index: int | None = None,
                 process_count: int | None = None):
    """Endless, seeded, checkpointable loader of packed training rows (``make_loader``)."""
    if config.data.name != "fortunes":
        from jssl.data.text_tfds import train_loader as tfds_loader

        return tfds_loader(config, process_index=process_index, process_count=process_count)
    corpus = load_corpus(config.data)
    rows = pack(corpus.train_ids, config.data, config.seed)
    rows["index"] = np.arange(len(rows["tokens"]), dtype=np.int32)
    source = ArraySource(f"fortunes:train:{config.data.packing}", **rows)
    return make_loader(source, global_batch_size=config.train.batch_size, seed=config.seed,
                       shuffle=True, num_epochs=None, process_index=process_index,
                       process_count=process_count, transforms=(),
                       worker_count=config.data.get("worker_count", 0))
