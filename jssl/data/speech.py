"""Speech data: fixed-length int16 waveforms from any TFDS audio dataset, read by grain.

    config.data.name           "spoken_digits_local/default" (offline, ``jssl.data.spoken_digits``)
                               or a TFDS speech dataset such as "librispeech"
    config.data.modality       "speech" (``jssl.data.inputs.train_loader`` dispatches here)
    config.data.audio_feature  the waveform feature ("audio"; "speech" for librispeech)
    config.data.label_feature  the class feature of the probes ("label"), or None
    config.data.eval_name      the dataset the evaluation reads, when it is not ``name`` (e.g.
                               pretrain on "spoken_digits_local/strings", unlabelled continuous
                               speech, and probe on the labelled words of ".../default")
    config.data.crop           samples per training example: a random window of a longer
                               waveform (the record's seeded generator), zero-padded if shorter
    config.data.sample_rate    16000 (checked against nothing: TFDS audio carries no rate here)

Evaluation reads whole splits as arrays (``eval_arrays``): the *centre* window of ``crop``
samples of every record, so the evaluation is deterministic.
"""
from __future__ import annotations

from typing import Any

import grain.python as grain
import numpy as np

from jssl.data import spoken_digits
from jssl.data.pipeline import make_loader, make_source


def _is_spoken_digits(name: str) -> bool:
    return name.split("/")[0].split(":")[0] == spoken_digits.NAME


def open_split(data: Any, split: str, name: str | None = None):
    """The TFDS source of ``split`` of ``name`` (default ``data.name``); the offline spoken
    digits are synthesised on first use."""
    name = name or data.name
    if _is_spoken_digits(name):
        parts = name.split(":")[0].split("/")
        spoken_digits.prepare_spoken_digits(data.get("data_dir"),
                                            parts[1] if len(parts) > 1 else "default")
    return make_source(name, split, data.get("data_dir"))


def window(audio: np.ndarray, crop: int, start: int | None = None) -> np.ndarray:
    """int16 [crop]: ``audio[start:start + crop]`` (centre window if ``start`` is None),
    zero-padded at the end when ``audio`` is shorter than ``crop``."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform, got shape {audio.shape}; "
                         f"set config.data.audio_feature to the mono waveform feature")
    if len(audio) <= crop:
        return np.pad(audio, (0, crop - len(audio))).astype(np.int16)
    start = (len(audio) - crop) // 2 if start is None else start
    return audio[start:start + crop].astype(np.int16)


class CropAudio(grain.RandomMapTransform):
    """record → ``{"audio": int16 [crop]}`` (+ ``"label"`` int32): a random window."""

    def __init__(self, audio_feature: str, crop: int, label_feature: str | None = None):
        self.audio_feature, self.crop, self.label_feature = audio_feature, crop, label_feature

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        audio = np.asarray(record[self.audio_feature])
        start = int(rng.integers(0, max(len(audio) - self.crop, 0) + 1))
        out = {"audio": window(audio, self.crop, start)}
        if self.label_feature:
            out["label"] = np.int32(record[self.label_feature])
        return out


def _check(data: Any) -> tuple[str, int]:
    crop = int(data.crop)
    if crop < 400:
        raise ValueError(f"config.data.crop={crop} samples is shorter than one wav2vec 2.0 "
                         f"frame's receptive field (400); use e.g. 16000 (1 s at 16 kHz)")
    return str(data.get("audio_feature", "audio")), crop


def train_loader(config: Any, *, process_index: int | None = None,
                 process_count: int | None = None):
    """Endless, seeded, checkpointable loader of this process's rows of waveform batches."""
    feature, crop = _check(config.data)
    source = open_split(config.data, config.data.train_split)
    # With a separate evaluation dataset the training records need not carry the label.
    label = None if config.data.get("eval_name") else config.data.get("label_feature")
    transform = CropAudio(feature, crop, label)
    return make_loader(source, global_batch_size=config.train.batch_size, seed=config.seed,
                       shuffle=True, num_epochs=None, process_index=process_index,
                       process_count=process_count, transforms=(transform,),
                       worker_count=config.data.get("worker_count", 0) or 0)


def eval_arrays(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(int16 waveforms [N, crop] (centre windows), int32 labels [N]) of a whole split of the
    evaluation dataset (``data.eval_name`` if set, else ``data.name``)."""
    feature, crop = _check(data)
    label = data.get("label_feature")
    name = data.get("eval_name") or data.name
    if not label:
        raise ValueError(f"config.data.label_feature is unset for {name!r}: the probes "
                         f"need a class feature (e.g. 'label')")
    source = open_split(data, split, name)
    n = len(source)
    audio = np.empty((n, crop), np.int16)
    labels = np.empty((n,), np.int32)
    for start in range(0, n, 256):
        idx = list(range(start, min(n, start + 256)))
        records = (source.__getitems__(idx) if hasattr(source, "__getitems__")
                   else [source[i] for i in idx])
        for i, rec in zip(idx, records, strict=True):
            if label not in rec:
                raise ValueError(f"config.data.label_feature={label!r} is not a feature of "
                                 f"{name!r} (it has {sorted(rec)}); set config.data.eval_name "
                                 f"to a labelled dataset, e.g. 'spoken_digits_local/default'")
            audio[i] = window(rec[feature], crop)
            labels[i] = rec[label]
    return audio, labels
