"""Text from a TFDS dataset (wikipedia, c4 ...), tokenized on the host: the paper-scale path.

    config.data.name            TFDS name, e.g. "wikipedia/20230601.en", "c4/en"
    config.data.text_feature    the string feature to read ("text")
    config.data.tokenizer_path  a SentencePiece model whose ids follow ``jssl.data.fortunes``
                                (0 PAD, 1 UNK, 2 CLS, 3 SEP, 4 MASK); required
    config.data.packing         "documents" only: ``[CLS] ids [SEP]`` (or ``ids [SEP]`` with
                                ``cls=False``), truncated to ``seq_len``, PAD-padded

Deliberately simple and untested against real TFDS text data (only built and traced in the
tests): no cross-document packing and no NSP pairs, so long documents are truncated and short
ones padded. The tokenizer is loaded lazily in each grain worker.
"""
from __future__ import annotations

import zlib
from typing import Any

import grain.python as grain
import numpy as np

from jssl.data import fortunes
from jssl.data.pipeline import make_loader, make_source


class TokenizeText(grain.MapTransform):
    """record → {"tokens": int32 [seq_len], "index": CRC-32 of the text (BERT's static mask
    key: the same document gets the same mask every epoch)} with the model at ``path``."""

    def __init__(self, path: str, feature: str, seq_len: int, cls: bool):
        self.path, self.feature, self.seq_len, self.cls = path, feature, seq_len, cls
        self._tok = None

    def map(self, record: dict) -> dict:
        if self._tok is None:
            self._tok = fortunes.load_tokenizer(self.path)
        text = record[self.feature]
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        ids = np.asarray(self._tok.encode(text), np.int32)
        row = fortunes.pack_documents([ids], self.seq_len, self.cls)[0]
        return {"tokens": row, "index": np.int32(zlib.crc32(text.encode()) & 0x7FFFFFFF)}


def train_loader(config: Any, *, process_index: int | None = None,
                 process_count: int | None = None):
    data = config.data
    if data.packing != "documents":
        raise ValueError(f"config.data.packing={data.packing!r} is not supported for TFDS text "
                         f"({data.name}); use 'documents'")
    if not data.get("tokenizer_path"):
        raise ValueError(f"config.data.tokenizer_path is unset; pass a SentencePiece model for "
                         f"{data.name} (ids as jssl.data.fortunes: 0 PAD .. 4 MASK)")
    source = make_source(data.name, data.train_split, data.get("data_dir"))
    transform = TokenizeText(data.tokenizer_path, data.text_feature, int(data.seq_len),
                             bool(data.get("cls", True)))
    return make_loader(source, global_batch_size=config.train.batch_size, seed=config.seed,
                       shuffle=True, num_epochs=None, process_index=process_index,
                       process_count=process_count, transforms=(transform,),
                       worker_count=data.get("worker_count", 0))
