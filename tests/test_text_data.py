"""The text data path: fortunes corpus reading and split, the SentencePiece tokenizer, row
packing, n-gram perplexity baselines (hand-computed), and BERT/RoBERTa masking statistics."""
from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from stat_bounds import binomial_sigma, within
from test_engine import ROOT, load_experiment

from jssl.data import fortunes as f
from jssl.evaluate.ngram import ngram_perplexities
from jssl.methods import get_method
from jssl.train.mesh import make_mesh


def _corpus_dir(tmp: Path) -> Path:
    root = tmp / "fortunes"
    (root / "off").mkdir(parents=True)
    (root / "alpha").write_text("First one.\n%\nSecond\n  two lines.\n%\n\n%\nThird.\n")
    (root / "alpha.dat").write_bytes(b"\x00\x02binary index")
    os.symlink("alpha", root / "alpha.u8")
    (root / "copy").write_text((root / "alpha").read_text())  # same file, another name
    (root / "beta").write_text("Only beta.\n")
    (root / "off" / "gamma").write_text("Offensive.\n%\nSkipped.\n")
    return root


def test_read_fortunes_skips_dat_u8_off_and_duplicates(tmp_path):
    texts, labels, names = f.read_fortunes(_corpus_dir(tmp_path))
    assert names == ["alpha", "beta"]
    assert texts == ["First one.", "Second\n  two lines.", "Third.", "Only beta."]
    assert labels == [0, 0, 0, 1]
    with pytest.raises(ValueError, match=r"config.data.categories names \['nope'\]"):
        f.read_fortunes(tmp_path / "fortunes", ("nope",))


@pytest.mark.skipif(not Path(f.DEFAULT_ROOT).is_dir(), reason="Debian fortunes not installed")
def test_real_corpus_entries_hold_no_separator():
    texts, labels, names = f.read_fortunes()
    assert len(names) == len(set(names)) and not any(n.endswith((".dat", ".u8")) for n in names)
    assert all("\n%\n" not in t and t.strip() == t and t for t in texts)
    assert np.bincount(labels).min() >= 1 and len(texts) > 10_000


def test_split_is_by_fortune_disjoint_and_seeded():
    tr, te = f.split_indices(1000, 0.1, seed=3)
    assert len(te) == 100 and len(tr) == 900
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(1000))
    np.testing.assert_array_equal(f.split_indices(1000, 0.1, seed=3)[1], te)
    assert not np.array_equal(f.split_indices(1000, 0.1, seed=4)[1], te)
    with pytest.raises(ValueError, match=r"test_fraction=1.5 must be in \(0, 1\)"):
        f.split_indices(10, 1.5, 0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["The quick brown fox jumps over the lazy dog.", "A fool and his money are soon "
             "parted.", "Time flies like an arrow; fruit flies like a banana."] * 20
    return f.train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t.model", 50,
                             num_sentinels=3)


def test_tokenizer_round_trips_and_reserves_special_ids(tokenizer):
    text = "A quick fox flies over the lazy banana."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert [tokenizer.id_to_piece(i) for i in range(5)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # T5 sentinels count down from <extra_id_0> (t5_span_corruption's convention).
    assert [tokenizer.piece_to_id(f"<extra_id_{i}>") for i in range(3)] == [7, 6, 5]
    assert f.sentinel_start(3) == 7 and f.special_ids(3) == (0, 1, 2, 3, 5, 6, 7)
    # Reserved pieces are control symbols: never produced from text (unseen characters: UNK).
    assert not set(tokenizer.encode("[MASK] <extra_id_0> [CLS] [PAD]")) & {0, 2, 3, 4, 5, 6, 7}
    assert tokenizer.get_piece_size() == 50


def test_packing_layouts():
    docs = [np.array([10, 11, 12]), np.array([20, 21])]
    np.testing.assert_array_equal(f.pack_contiguous(docs, 4, cls=False),
                                  [[10, 11, 12, 3], [20, 21, 3, 0]])
    np.testing.assert_array_equal(f.pack_contiguous(docs, 4, cls=True),
                                  [[2, 10, 11, 12], [2, 3, 20, 21], [2, 3, 0, 0]])
    np.testing.assert_array_equal(f.pack_documents(docs, 4), [[2, 10, 11, 3], [2, 20, 21, 3]])


def test_nsp_pairs_continue_the_fortune_half_the_time():
    rng = np.random.default_rng(0)
    docs = [np.arange(1000 * i + 10, 1000 * i + 10 + n) for i, n in
            enumerate(rng.integers(2, 40, 2000))]
    rows = f.pack_nsp_pairs(docs, 32, seed=0)
    labels = rows["nsp_label"]
    within(labels.mean(), 0.5, binomial_sigma(0.5, len(labels)))
    for tok, seg, lab in zip(rows["tokens"][:200], rows["segment_ids"][:200], labels[:200],
                             strict=True):
        n = int(np.sum(tok != f.PAD))
        assert tok[0] == f.CLS and tok[n - 1] == f.SEP and n <= 32
        a_end = int(np.argmax(tok == f.SEP))
        a, b = tok[1:a_end], tok[a_end + 1:n - 1]
        assert (seg[:a_end + 1] == 0).all() and (seg[a_end + 1:n] == 1).all()
        assert len(a) >= 1 and len(b) >= 1
        same_doc = a[-1] // 1000 == b[0] // 1000
        assert same_doc == (lab == 0)
        if lab == 0:  # IsNext: B continues A inside the same fortune
            assert b[0] == a[-1] + 1


def test_ngram_perplexities_equal_hand_computed_values():
    # V = 6; rows [N, L] with PAD = 0; scored pairs: both tokens non-padding.
    train = np.array([[4, 5, 4, 5, 0], [5, 4, 4, 3, 0]])
    test = np.array([[4, 5, 3, 0, 0]])
    out = ngram_perplexities(train, test, 6, alphas=(2.0,), val_fraction=0.5)
    # Train pairs: (4,5) (5,4) (4,5) | (5,4) (4,4) (4,3); targets 5 4 5 4 4 3.
    p_uni = {w: (c + 1) / (6 + 6) for w, c in {0: 0, 1: 0, 2: 0, 3: 1, 4: 3, 5: 2}.items()}
    assert out["unigram"] == pytest.approx(math.exp(-(math.log(p_uni[5])
                                                      + math.log(p_uni[3])) / 2))
    # Test pairs (4,5), (5,3); c(4,·) = 4 with c(4,5) = 2; c(5,·) = 2 with c(5,3) = 0.
    p45 = (2 + 2.0 * p_uni[5]) / (4 + 2.0)
    p53 = (0 + 2.0 * p_uni[3]) / (2 + 2.0)
    assert out["bigram"] == pytest.approx(math.exp(-(math.log(p45) + math.log(p53)) / 2))
    assert out["bigram_alpha"] == 2.0


def _method(experiment: str, **data):
    config = load_experiment(ROOT / "experiments" / f"{experiment}.py").get_config("tiny")
    config.data.update(data)
    return get_method(config.method)(config, make_mesh(config, devices=jax.devices()[:1]))


def test_bert_masking_is_80_10_10_and_static_or_dynamic():
    rng = np.random.default_rng(0)
    vocab = 256
    tokens = rng.integers(5, vocab, (64, 128)).astype(np.int32)
    tokens[:, 0], tokens[:, -1], tokens[::2, 100:] = f.CLS, f.SEP, f.PAD
    batch = {"tokens": tokens, "index": np.arange(64, dtype=np.int32)}
    bert, roberta = _method("bert", seq_len=128), _method("roberta", seq_len=128)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    out = jax.device_get(roberta.prepare(batch, k1))
    w = out["weights"].astype(bool)
    eligible = ~np.isin(tokens, f.special_ids())
    assert not w[~eligible].any()
    within(w.sum() / eligible.sum(), 0.15, binomial_sigma(0.15, eligible.sum()))
    chosen = w.sum()
    masked = (out["inputs"] == f.MASK) & w
    kept = (out["inputs"] == tokens) & w
    within(masked.sum() / chosen, 0.8, binomial_sigma(0.8, chosen))
    # Unchanged: 10 % kept + 10 % random that drew the same token (1 / 251 allowed ids).
    p_kept = 0.1 + 0.1 / (vocab - len(f.special_ids()) - 1)
    within(kept.sum() / chosen, p_kept, binomial_sigma(p_kept, chosen))
    np.testing.assert_array_equal(out["inputs"][~w], tokens[~w])
    np.testing.assert_array_equal(out["labels"], tokens)
    # RoBERTa: a new mask every step; BERT: the example's mask, whatever the step key.
    assert (jax.device_get(roberta.prepare(batch, k2))["weights"] != out["weights"]).any()
    s1, s2 = (jax.device_get(bert.prepare(batch, k)) for k in (k1, k2))
    np.testing.assert_array_equal(s1["inputs"], s2["inputs"])
    shifted = jax.device_get(bert.prepare({**batch, "index": batch["index"] + 1}, k1))
    assert (shifted["weights"] != s1["weights"]).any()
