"""Captioned images (TFDS ``coco_captions`` or a local captions folder) → ``{image, tokens}``.

    config.data.modality         "image_text" (``jssl.data.inputs.train_loader`` dispatches here)
    config.data.name             a TFDS dataset with coco_captions' features -- ``image`` and
                                 ``captions: Sequence({"text", "id"})`` -- e.g. "coco_captions",
                                 or "captions_folder" (built from ``captions_dir``, below)
    config.data.captions_dir     captions_folder only: ``<split>.jsonl`` files of lines
                                 ``{"image": "path/relative/to/dir.jpg", "captions": [...]}``
    config.data.data_dir         TFDS data dir (captions_folder: default ``captions_dir/tfds``,
                                 built there once, under a file lock, as array_record)
    config.data.tokenizer_path   SentencePiece model, ids as ``jssl.data.fortunes`` (0 PAD,
                                 1 UNK, 2 CLS, 3 SEP); required. Train one with the CLI below.
    config.augment.resize        shorter side R of the host images (default ``augment.size``)
    config.captions.max_len      L tokens per caption
    config.eval.retrieval_images N held-out images of the retrieval evaluation (COCO 5k: 5000)

Training record → ``{"image": uint8 [R, R, 3], "tokens": int32 [L]}``: the image's shorter side
resized to R (bicubic, Pillow) and centre-cropped square; ONE of its captions drawn uniformly
with grain's per-record generator (``Philox(seed + stream position)``: a fresh caption every
epoch, the same for a seed, resumed with the iterator state), tokenised as
``[CLS] ids [SEP]`` (truncated) and PAD-padded to L. The method crops ``augment.size`` views
on the device. Evaluation images: shorter side to R, centre crop ``augment.size``.

Tokenizer (once, on the training split's captions)::

  python -m jssl.data.image_text_tfds --train_tokenizer --name coco_captions --split train \\
      --out coco.model --vocab_size 16000 [--data_dir DIR] [--captions_dir DIR]

An offline captions folder from Fashion-MNIST (5 class captions per image; ``clip.py``'s
``fashion_captions`` preset)::

  python -m jssl.data.image_text_tfds --fashion_mnist_folder DIR
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import grain.python as grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jssl.data import fortunes
from jssl.data.fashion_mnist import _prepare_locked
from jssl.data.host_transforms import decode_image
from jssl.data.pipeline import make_loader, make_source

FOLDER = "captions_folder"


# ------------------------------------------------------------------- a local captions folder
class CaptionsFolder(tfds.core.GeneratorBasedBuilder):
    """Images + captions from a folder (``manual_dir``), with coco_captions' features."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "config.data.captions_dir: <split>.jsonl + the images"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="Captioned images from a local folder.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "image/id": np.int64,
                "captions": tfds.features.Sequence({"text": tfds.features.Text(),
                                                    "id": np.int64})}),
            disable_shuffling=True)  # records in file order

    def _split_generators(self, dl_manager) -> dict:
        root = Path(dl_manager.manual_dir)
        files = sorted(root.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"config.data.captions_dir={str(root)!r} holds no "
                                    "<split>.jsonl; add e.g. train.jsonl and test.jsonl")
        return {f.stem: self._generate_examples(f) for f in files}

    def _generate_examples(self, path: Path):
        first = 0
        for i, line in enumerate(path.read_text().splitlines()):
            row = json.loads(line)
            caps = [str(c) for c in row["captions"]]
            if not caps:
                raise ValueError(f"{path}:{i + 1} has no caption; give every image one or more")
            image = path.parent / row["image"]
            with Image.open(image) as im:  # PNG-encoded by Pillow: no TensorFlow needed
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
            yield i, {"image": buf.getvalue(), "image/id": i,
                      "captions": {"text": caps, "id": list(range(first, first + len(caps)))}}
            first += len(caps)


def prepare_captions_folder(captions_dir: str | os.PathLike,
                            data_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Build ``captions_dir`` as array_record once (default data dir: ``captions_dir/tfds``)."""
    data_dir = Path(data_dir) if data_dir else Path(captions_dir) / "tfds"
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(captions_dir))
    return _prepare_locked(FOLDER, data_dir, download_config=config)


def open_split(data: Any, split: str, skip_image: bool = False):
    """The random-access source of ``split`` (``skip_image``: images stay encoded bytes)."""
    name, data_dir = data.name, data.get("data_dir")
    if name == FOLDER:
        if not data.get("captions_dir"):
            raise ValueError("config.data.captions_dir is unset; captions_folder needs the "
                             "folder holding <split>.jsonl and its images")
        data_dir = prepare_captions_folder(data.captions_dir, data_dir).data_dir_root
    if not skip_image:
        return make_source(name, split, data_dir)
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})


def caption_texts(record: dict) -> list[str]:
    return [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t)
            for t in record["captions"]["text"]]


# ----------------------------------------------------------------------- images and tokens
def square(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """uint8 [crop, crop, 3]: shorter side resized to ``resize`` (bicubic), centre crop."""
    im = Image.fromarray(np.ascontiguousarray(image[..., :3] if image.shape[-1] >= 3
                                              else np.repeat(image, 3, -1)))
    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(crop, round(w * scale)), max(crop, round(h * scale))),
                   Image.Resampling.BICUBIC)
    left, top = (im.size[0] - crop) // 2, (im.size[1] - crop) // 2
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


def tokenize(tok: Any, text: str, max_len: int) -> np.ndarray:
    """int32 [max_len]: ``[CLS] ids [SEP]`` (ids truncated), PAD-padded."""
    return fortunes.pack_documents([np.asarray(tok.encode(text), np.int32)], max_len)[0]


def check_tokenizer(config: Any):
    """The SentencePiece model of ``config.data.tokenizer_path``, checked against the text
    tower's ``config.model.text.vocab_size``."""
    path = config.data.get("tokenizer_path")
    help_ = ("train one with python -m jssl.data.image_text_tfds --train_tokenizer "
             f"--name {config.data.name} --split {config.data.train_split} --out PATH")
    if not path:
        raise ValueError(f"config.data.tokenizer_path is unset; {help_}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config.data.tokenizer_path={path!r} does not exist; {help_}")
    tok = fortunes.load_tokenizer(path)
    vocab = int(config.model.text.get("vocab_size", 0) or 0)
    if vocab < tok.get_piece_size():
        raise ValueError(f"config.model.text.vocab_size={vocab} is smaller than the "
                         f"tokenizer's {tok.get_piece_size()} pieces ({path}); set it to at "
                         f"least {tok.get_piece_size()}")
    return tok


class CaptionedImage(grain.RandomMapTransform):
    """record → ``{"image": uint8 [R, R, 3], "tokens": int32 [L]}``, one caption drawn with
    the record's generator; the tokenizer is loaded lazily (once per grain worker)."""

    def __init__(self, tokenizer_path: str, resize: int, max_len: int):
        self.tokenizer_path, self.resize, self.max_len = tokenizer_path, resize, max_len
        self._tok = None

    def __getstate__(self) -> dict:  # grain workers load their own SentencePiece processor
        return {**self.__dict__, "_tok": None}

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        if self._tok is None:
            self._tok = fortunes.load_tokenizer(self.tokenizer_path)
        texts = caption_texts(record)
        text = texts[int(rng.integers(len(texts)))]
        return {"image": square(decode_image(record["image"]), self.resize, self.resize),
                "tokens": tokenize(self._tok, text, self.max_len)}


def _sizes(config: Any) -> tuple[int, int]:
    """(R = augment.resize, S = augment.size), checked."""
    size = int(config.augment.size)
    resize = int(config.augment.get("resize", size) or size)
    if resize < size:
        raise ValueError(f"config.augment.resize={resize} is smaller than augment.size={size}; "
                         f"use resize >= size (e.g. 256 for 224)")
    return resize, size


def train_loader(config: Any, *, process_index: int | None = None,
                 process_count: int | None = None):
    """Endless, seeded, checkpointable loader of this process's rows of captioned batches."""
    check_tokenizer(config)
    resize, _ = _sizes(config)
    source = open_split(config.data, config.data.train_split)
    transform = CaptionedImage(str(config.data.tokenizer_path), resize,
                               int(config.captions.max_len))
    return make_loader(source, global_batch_size=config.train.batch_size, seed=config.seed,
                       shuffle=True, num_epochs=None, process_index=process_index,
                       process_count=process_count, transforms=(transform,),
                       worker_count=config.data.get("worker_count", 0) or 0)


def retrieval_set(config: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The first ``eval.retrieval_images`` images of the test split with ALL their captions:
    (uint8 images [N, S, S, 3], int32 tokens [M, L], owner [M] = image of each caption,
    number of training records)."""
    tok = check_tokenizer(config)
    resize, size = _sizes(config)
    source = open_split(config.data, config.data.test_split)
    n = min(len(source), int(config.eval.get("retrieval_images", 5000)))
    images, tokens, owner = [], [], []
    for i in range(n):
        record = source[i]
        images.append(square(decode_image(record["image"]), resize, size))
        texts = caption_texts(record)
        tokens += [tokenize(tok, t, int(config.captions.max_len)) for t in texts]
        owner += [i] * len(texts)
    n_train = len(open_split(config.data, config.data.train_split, skip_image=True))
    return np.stack(images), np.stack(tokens), np.asarray(owner, np.int64), n_train


# ---------------------------------------------- an offline captions folder: Fashion-MNIST
def write_fashion_mnist_folder(out: str | os.PathLike, idx_dir: str | os.PathLike,
                               per_image: int = 5, seed: int = 0) -> Path:
    """A captions folder of Fashion-MNIST's IDX files: ``per_image`` distinct captions of the
    image's class per image (``jssl.data.captions``; train images: TRAIN_TEMPLATES × synonyms,
    test images: the HELD_OUT_TEMPLATES), drawn without replacement by a seeded generator.
    Captions name only the class, so retrieval among same-class images is a tie."""
    from jssl.data import captions
    from jssl.data.fashion_mnist import IDX_FILES
    from jssl.data.idx import read_idx_images, read_idx_labels

    out, rng = Path(out), np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, templates in (("train", captions.TRAIN_TEMPLATES),
                             ("test", captions.HELD_OUT_TEMPLATES)):
        table = captions.class_captions(captions.FASHION_MNIST_CLASSES, templates)
        images = read_idx_images(Path(idx_dir) / IDX_FILES[split][0], shape=(28, 28))
        labels = read_idx_labels(Path(idx_dir) / IDX_FILES[split][1], num_classes=10)
        rows = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"images/{split}{i:05d}.png"
            Image.fromarray(image).save(out / name)
            pick = rng.choice(len(table[label]), size=per_image, replace=False)
            rows.append(json.dumps({"image": name,
                                    "captions": [table[label][k] for k in pick]}))
        (out / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return out


# -------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """CLI: train a SentencePiece tokenizer on the captions of a split (or write the
    Fashion-MNIST captions folder)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train_tokenizer", action="store_true")
    p.add_argument("--name", default="coco_captions")
    p.add_argument("--split", default="train")
    p.add_argument("--out", help="where the .model is written")
    p.add_argument("--vocab_size", type=int, default=16_000)
    p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "word"))
    p.add_argument("--data_dir", default=None)
    p.add_argument("--captions_dir", default=None, help="captions_folder only")
    p.add_argument("--fashion_mnist_folder", default=None,
                   help="write Fashion-MNIST as a captions folder here instead")
    p.add_argument("--idx_dir", default="/usr/share/datasets/fashion-mnist")
    args = p.parse_args(argv)
    if args.fashion_mnist_folder:
        print(write_fashion_mnist_folder(args.fashion_mnist_folder, args.idx_dir))
        return 0
    if not (args.train_tokenizer and args.out):
        p.error("give --train_tokenizer --out PATH (or --fashion_mnist_folder DIR)")
    data = ml_collections.ConfigDict(
        {"name": args.name, "data_dir": args.data_dir, "captions_dir": args.captions_dir})
    source = open_split(data, args.split, skip_image=True)
    texts = [t for i in range(len(source)) for t in caption_texts(source[i])]
    tok = fortunes.train_tokenizer(texts, args.out, args.vocab_size, model_type=args.model_type)
    print(f"{args.out}: {tok.get_piece_size()} pieces from {len(texts)} captions of "
          f"{args.name}:{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
