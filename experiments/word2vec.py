"""word2vec skip-gram with negative sampling (Mikolov et al. 2013) on SentencePiece pieces.

Presets (``--config=experiments/word2vec.py:PRESET``):

tiny          CI smoke test: 4 steps of 16-d vectors on four fortune categories.
              python -m jssl.main --config=experiments/word2vec.py:tiny --workdir=/tmp/t
              any CPU, seconds; no metric expected.
fortunes      The offline CPU preset: the fortunes stream (split and tokenizer as bert.py) in
              rows of 64 pieces, 100-d vectors, window 5, 5 negatives, subsampling t = 1e-4,
              batch 64 rows, AdamW lr 3e-3, 1000 steps. Reports the co-occurrence neighbour
              check and category probes on mean-pooled vectors (pretrained vs random init).
              python -m jssl.main --config=experiments/word2vec.py:fortunes \
                  --workdir=runs/word2vec_fortunes
              jssl neighbours --workdir=runs/word2vec_fortunes --word=love
              2-core CPU: see docs/RESULTS.md for the measured time and numbers.
wiki_300      The paper's setting (§3–4): 300-d vectors, window 5 (10 in the analogy runs),
              5 negatives, subsampling 1e-5, on English Wikipedia (TFDS
              ``wikipedia/20230601.en``, one document a row, pieces of
              ``--config.data.tokenizer_path``, whose unigram probabilities give the noise
              distribution). Deviation: pieces, not words; AdamW, not SGD with linear decay.
              Untested end to end: builds and traces only.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fortunes", "wiki_300")


def base() -> ml_collections.ConfigDict:
    c = configs.text_base("word2vec", packing="contiguous")
    c.data.cls = False
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict({"name": "skipgram", "dim": 100})
    c.word2vec = ml_collections.ConfigDict({"window": 5, "negatives": 5, "subsample": 1e-4})
    c.optim.update({"base_lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 50})
    return c


def get_config(arg: str = "fortunes") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"word2vec_{arg}"
    if arg == "tiny":
        configs.make_text_tiny(c)
        c.model.encoder.dim = 16
        c.word2vec.update({"window": 3, "negatives": 2})
    elif arg == "fortunes":
        pass
    elif arg == "wiki_300":
        configs.use_text_tfds(c, "wikipedia/20230601.en", vocab_size=32000, seq_len=256)
        c.data.cls = False
        c.model.encoder.dim = 300
        c.word2vec.update({"window": 5, "negatives": 5, "subsample": 1e-5})
        c.train.batch_size = 256
        c.train.steps = 1_000_000
    else:
        raise ValueError(f"unknown word2vec preset {arg!r}; use one of {PRESETS}")
    return c
