"""The captioned-image pipeline (jssl.data.image_text_tfds) on a small local captions folder
with coco_captions' features, and the caption retrieval evaluation (CLIP's COCO protocol)."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from stat_bounds import within
from test_engine import tiny_config  # tests/ is on sys.path

from jssl.data import fortunes
from jssl.data import image_text_tfds as itt
from jssl.data.inputs import train_loader
from jssl.data.pipeline import restore_iterator
from jssl.evaluate.zero_shot import caption_retrieval_results, text_embeddings
from jssl.train.mesh import make_mesh
from jssl.train.run import run

# One xdist worker runs this module, so its module-scoped fixtures (compiled train steps)
# are built once, not once per worker (`pytest -n 2 --dist loadgroup`).
pytestmark = pytest.mark.xdist_group("image_text_tfds")

WORDS = ("red green blue small large old young cat dog bird car tree boat "
         "sits runs flies waits near under beside the grass road water house").split()
VOCAB = 48


def _colour(split: str, i: int) -> tuple[int, int, int]:
    """Record i's constant colour (identifies the record after resizing)."""
    base = 0 if split == "train" else 128
    return base + 9 * i + 3, 250 - 9 * i - base // 2, 5 * i + 1


def _captions(split: str, i: int, rng: np.random.Generator) -> list[str]:
    """1, 2 or 3 distinct captions (record i has 1 + i % 3)."""
    caps: list[str] = []
    while len(caps) < 1 + i % 3:
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
        if text not in caps:
            caps.append(text)
    return caps


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train (12 records) and test (6 records) splits, one image grey (mode L), and a
    tokenizer trained on the train captions through the CLI."""
    root = tmp_path_factory.mktemp("captions")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        rows = []
        for i in range(n):
            h, w = int(rng.integers(18, 40)), int(rng.integers(18, 40))
            pixels = np.broadcast_to(np.uint8(_colour(split, i)), (h, w, 3))
            image = Image.fromarray(np.ascontiguousarray(pixels))
            if split == "train" and i == 4:  # a grey file: converted to RGB by the builder
                image = Image.fromarray(np.full((h, w), _colour(split, i)[0], np.uint8))
            image.save(root / f"{split}{i}.png")
            rows.append(json.dumps({"image": f"{split}{i}.png",
                                    "captions": _captions(split, i, rng)}))
        (root / f"{split}.jsonl").write_text("\n".join(rows))
    assert itt.main(["--train_tokenizer", "--name", itt.FOLDER, "--split", "train",
                     "--captions_dir", str(root), "--out", str(root / "tok.model"),
                     "--vocab_size", str(VOCAB)]) == 0
    return root


def _jsonl(folder: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]


def _config(folder: Path, **over) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict({
        "seed": 0, "train": {"batch_size": 4},
        "data": {"name": itt.FOLDER, "modality": "image_text", "captions_dir": str(folder),
                 "data_dir": None, "tokenizer_path": str(folder / "tok.model"),
                 "train_split": "train", "test_split": "test", "worker_count": 0},
        "augment": {"size": 16, "resize": 20}, "captions": {"max_len": 32},
        "model": {"text": {"vocab_size": VOCAB}}, "eval": {"retrieval_images": 4}})
    for key, value in over.items():
        section, field = key.rsplit(".", 1)
        c[section][field] = value
    return c


def test_folder_builds_with_coco_features_and_the_tokenizer_cli_wrote_a_model(folder):
    source = itt.open_split(_config(folder).data, "train")
    rows = _jsonl(folder, "train")
    assert len(source) == 12 and len(itt.open_split(_config(folder).data, "test")) == 6
    first_id = 0
    for i, row in enumerate(rows):
        record = source[i]
        with Image.open(folder / row["image"]) as im:
            want = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(record["image"], want)  # PNG: lossless; grey → RGB
        assert itt.caption_texts(record) == row["captions"]
        np.testing.assert_array_equal(record["captions"]["id"],
                                      np.arange(first_id, first_id + len(row["captions"])))
        first_id += len(row["captions"])
    tok = fortunes.load_tokenizer(folder / "tok.model")
    assert tok.get_piece_size() == VOCAB
    assert [tok.id_to_piece(i) for i in range(4)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def test_square_resizes_the_shorter_side_and_crops_the_centre():
    # Rows 0-14 are 0, 15-44 are 100, 45-59 are 200 (60 × 20). Shorter side 20 → 10: the
    # image becomes 30 × 10 and the centre crop keeps resized rows 10-19 = original 20-39,
    # inside the middle band by more than the bicubic kernel's reach (4 original rows).
    tall = np.zeros((60, 20, 1), np.uint8)
    tall[15:45], tall[45:] = 100, 200
    out = itt.square(tall, 10, 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, 100)  # grey → 3 equal channels
    wide = itt.square(np.repeat(tall.transpose(1, 0, 2), 3, -1), 10, 8)  # 20 × 60
    assert wide.shape == (8, 8, 3)
    np.testing.assert_array_equal(wide, 100)


def _row_record(image: np.ndarray, split: str = "train") -> int:
    """The record whose colour the (constant) image has."""
    colour = tuple(int(v) for v in image[0, 0])
    for i in range(12):
        want = _colour(split, i)
        if i == 4 and split == "train":
            want = (want[0],) * 3
        if colour == want:
            np.testing.assert_array_equal(image, np.broadcast_to(want, image.shape))
            return i
    raise AssertionError(f"no record has colour {colour}")


def _epochs(loader, epochs: int, tok) -> list[dict[int, str]]:
    """Per epoch (3 batches of 4 = the 12 records), record → decoded caption."""
    it, out = iter(loader), []
    for _ in range(epochs):
        drawn = {}
        for _ in range(3):
            batch = next(it)
            for image, tokens in zip(batch["image"], batch["tokens"], strict=True):
                n = int(np.sum(tokens != fortunes.PAD))
                assert tokens[0] == fortunes.CLS and tokens[n - 1] == fortunes.SEP
                assert np.all(tokens[n:] == fortunes.PAD)
                drawn[_row_record(image)] = tok.decode(tokens[1:n - 1].tolist())
        assert sorted(drawn) == list(range(12))  # every record once per epoch
        out.append(drawn)
    return out


def test_loader_draws_one_caption_per_record_and_epoch_deterministically(folder):
    tok = fortunes.load_tokenizer(folder / "tok.model")
    config = _config(folder)
    loader = train_loader(config, process_index=0, process_count=1)  # dispatch by modality
    batch = next(iter(loader))
    assert set(batch) == {"image", "tokens"}
    assert batch["image"].shape == (4, 20, 20, 3) and batch["image"].dtype == np.uint8
    assert batch["tokens"].shape == (4, 32) and batch["tokens"].dtype == np.int32

    epochs = _epochs(loader, 10, tok)
    rows = _jsonl(folder, "train")
    for drawn in epochs:
        for i, text in drawn.items():
            assert text in rows[i]["captions"], (i, text)  # tokens decode to a caption
    assert epochs == _epochs(train_loader(config, process_index=0, process_count=1), 10, tok)
    # Uniform over the record's k captions: caption 0 is drawn with probability 1/k.
    draws = [(drawn[i] == rows[i]["captions"][0], 1 / len(rows[i]["captions"]))
             for drawn in epochs for i in range(12) if len(rows[i]["captions"]) > 1]
    p = np.array([q for _, q in draws])
    within(sum(hit for hit, _ in draws), p.sum(), np.sqrt(np.sum(p * (1 - p))))
    changed = [i for i in range(12) if len({d[i] for d in epochs}) > 1]
    assert changed == [i for i in range(12) if len(rows[i]["captions"]) > 1]
    seed1 = _config(folder)
    seed1.seed = 1
    assert _epochs(train_loader(seed1, process_index=0, process_count=1), 10, tok) != epochs


def test_resumed_iterator_continues_identically_and_processes_split_rows(folder):
    loader = train_loader(_config(folder), process_index=0, process_count=1)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    got = restore_iterator(train_loader(_config(folder), process_index=0, process_count=1),
                           state)
    for a in want:
        b = next(got)
        np.testing.assert_array_equal(b["image"], a["image"])
        np.testing.assert_array_equal(b["tokens"], a["tokens"])
    # Process p of 2 reads rows [2p, 2p + 2) of every global batch, the same images and
    # captions (the caption generator follows the record's global stream position).
    halves = [iter(train_loader(_config(folder), process_index=p, process_count=2))
              for p in range(2)]
    whole = next(iter(loader))
    for p, it_p in enumerate(halves):
        part = next(it_p)
        for key in ("image", "tokens"):
            np.testing.assert_array_equal(part[key], whole[key][2 * p:2 * p + 2])


def test_bad_configs_fail_with_one_clear_line(folder):
    with pytest.raises(ValueError, match=r"config.data.tokenizer_path is unset; train one with "
                                         r"python -m jssl.data.image_text_tfds"):
        train_loader(_config(folder, **{"data.tokenizer_path": None}))
    with pytest.raises(FileNotFoundError, match=r"tokenizer_path='/nope.model' does not exist"):
        train_loader(_config(folder, **{"data.tokenizer_path": "/nope.model"}))
    with pytest.raises(ValueError, match=rf"config.model.text.vocab_size=40 is smaller than the "
                                         rf"tokenizer's {VOCAB} pieces .*at least {VOCAB}"):
        train_loader(_config(folder, **{"model.text.vocab_size": 40}))
    with pytest.raises(ValueError, match=r"config.augment.resize=12 is smaller than "
                                         r"augment.size=16"):
        train_loader(_config(folder, **{"augment.resize": 12}))
    with pytest.raises(ValueError, match=r"config.data.captions_dir is unset"):
        train_loader(_config(folder, **{"data.captions_dir": None}))


# --------------------------------------------------------------------- retrieval evaluation
class _Toy:
    """Image i is the constant 10·(i+1); caption tokens [CLS, 10 + owner, SEP]; both towers
    look their input up in given embedding tables."""

    def __init__(self, image_emb: np.ndarray, text_emb: np.ndarray):
        self.image_emb, self.text_emb = jnp.asarray(image_emb), np.asarray(text_emb)
        self.mesh = make_mesh(ml_collections.ConfigDict({"mesh": {"data": -1}}),
                              devices=jax.devices()[:1])
        self.config = ml_collections.ConfigDict({"eval": {"recall_k": (1, 2)}})
        self.text_shapes: list[tuple[int, ...]] = []

    def features(self, variables, extra, images):
        i = jnp.round(jnp.mean(images, axis=(1, 2, 3)) * 255 / 10 - 1).astype(jnp.int32)
        return self.image_emb[i]

    def text_features(self, variables, tokens):
        self.text_shapes.append(np.shape(tokens))
        return self.text_emb[np.asarray(tokens)[:, 1] - 10]


def _toy_data(owner: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n = max(owner) + 1
    images = np.broadcast_to((10 * np.arange(1, n + 1)).astype(np.uint8)[:, None, None, None],
                             (n, 4, 4, 3)).copy()
    tokens = np.stack([[fortunes.CLS, 10 + m, fortunes.SEP, 0] for m in range(len(owner))])
    return images, tokens.astype(np.int32)


def _recall_reference(sim: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    """(i2t, t2i) recall@k by ranks, one query at a time (ties: earlier gallery item first)."""
    def rank(row, j):  # 0-based rank of gallery item j in the row
        return int(np.sum(row > row[j]) + np.sum(row[:j] == row[j]))
    i2t = np.mean([min(rank(sim[i], m) for m in np.flatnonzero(owner == i)) < k
                   for i in range(sim.shape[0])])
    t2i = np.mean([rank(sim[:, m], owner[m]) < k for m in range(sim.shape[1])])
    return float(i2t), float(t2i)


def test_retrieval_is_perfect_on_a_matching_toy_and_matches_a_numpy_reference():
    owner = [0, 0, 1, 2, 2, 2, 3, 4, 4]  # image i's captions; 5 images, 9 captions
    images, tokens = _toy_data(owner)
    eye = np.eye(5)
    toy = _Toy(eye * 3.0, eye[owner] + 0.05)  # caption m's embedding points at its image
    results = caption_retrieval_results(toy, {}, {}, images, tokens, np.array(owner), "toy")
    assert {r["kind"]: r["accuracy"] for r in results} == {
        "recall_i2t@1": 1.0, "recall_i2t@2": 1.0, "recall_t2i@1": 1.0, "recall_t2i@2": 1.0}
    assert results[0]["protocol"] == "image→text recall@1 (toy, 5 images, 9 captions)"
    assert all(r["label_fraction"] == 0.0 for r in results)

    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(5, 6)), rng.normal(size=(9, 6))
    toy = _Toy(img, txt)
    got = {r["kind"]: r["accuracy"]
           for r in caption_retrieval_results(toy, {}, {}, images, tokens, np.array(owner),
                                              "toy")}
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sim = unit(img) @ unit(txt).T
    for k in (1, 2):
        i2t, t2i = _recall_reference(sim, np.array(owner), k)
        assert got[f"recall_i2t@{k}"] == pytest.approx(i2t, abs=1e-12)
        assert got[f"recall_t2i@{k}"] == pytest.approx(t2i, abs=1e-12)
    assert 0.0 < got["recall_i2t@1"] < 1.0 or 0.0 < got["recall_t2i@1"] < 1.0

    # Chunks of 4 (the last padded with row 0): every call has one shape, same embeddings.
    toy.text_shapes.clear()
    np.testing.assert_allclose(text_embeddings(toy, {}, tokens, batch_size=4), txt, rtol=0)
    assert toy.text_shapes == [(4, 4)] * 3


def test_tiny_clip_trains_on_the_captions_folder_and_evaluates_retrieval(folder, tmp_path):
    config = tiny_config(tmp_path, "clip", **{
        "data.name": itt.FOLDER, "data.modality": "image_text",
        "data.captions_dir": str(folder), "data.data_dir": str(folder / "tfds"),
        "data.tokenizer_path": str(folder / "tok.model"), "model.text.vocab_size": VOCAB,
        "augment.resize": 32, "eval.retrieval_images": 5})
    summary = run(config, tmp_path / "run")
    n_captions = sum(len(r["captions"]) for r in _jsonl(folder, "test")[:5])  # first 5
    assert [r["kind"] for r in summary["results"]] == [
        "recall_i2t@1", "recall_i2t@5", "recall_t2i@1", "recall_t2i@5"]
    assert summary["results"][0]["protocol"] == (
        f"image→text recall@1 (captions_folder:test, 5 images, {n_captions} captions)")
    values = {r["kind"]: r["accuracy"] for r in summary["results"]}
    assert values["recall_t2i@5"] == 1.0  # a gallery of 5 images: the top 5 is all of it
    assert values["recall_t2i@1"] * n_captions == pytest.approx(
        round(values["recall_t2i@1"] * n_captions))  # a count of captions
    assert summary["train_examples"] == 12 and summary["dataset"] == itt.FOLDER
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    assert np.isfinite(json.loads(lines[-1])["loss"])
