"""Unsupervised SimCSE (Gao et al. 2021): two dropout views of each text, NT-Xent T = 0.05.

Presets (``--config=experiments/simcse.py:PRESET``):

tiny          CI smoke test: 4 steps of a 2-layer, 32-wide BERT encoder on four fortune
              categories.
              python -m jssl.main --config=experiments/simcse.py:tiny --workdir=/tmp/t
              any CPU, seconds; no metric expected.
fortunes      The offline CPU preset: one fortune a row ([CLS] … [SEP], 64 tokens) from the
              split and tokenizer of bert.py, the 4-layer 128-wide encoder of bert.py trained
              from scratch, batch 64, AdamW lr 1e-3, T = 0.05. Reports category linear probes
              (pretrained vs random init, 100 % / 10 % labels).
              python -m jssl.main --config=experiments/simcse.py:fortunes --workdir=runs/simcse
              2-core CPU: a few minutes; not measured yet.
wiki_base     The paper's unsupervised recipe (§3, App. A): BERT-base, 10^6 English Wikipedia
              sentences for one epoch (15 625 steps of batch 64), max length 32, lr 3e-5,
              T = 0.05, dropout 0.1. Data: TFDS ``wikipedia/20230601.en`` documents (truncated to
              32 tokens; the paper samples sentences), tokenizer from
              ``--config.data.tokenizer_path``. Deviation: trained from scratch; the paper starts
              from pretrained BERT-base (so this preset alone will not reproduce its 76.3 STS
              average). Untested end to end: builds and traces only.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fortunes", "wiki_base")


def base() -> ml_collections.ConfigDict:
    c = configs.text_base("simcse", packing="documents")
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "bert", "preset": "tiny", "hidden_dim": 128, "num_layers": 4, "num_heads": 4,
         "mlp_dim": 512, "use_nsp": False, "type_vocab_size": 0})
    c.loss = ml_collections.ConfigDict({"temperature": 0.05, "impl": "gather"})
    return c


def get_config(arg: str = "fortunes") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"simcse_{arg}"
    if arg == "tiny":
        configs.make_text_tiny(c)
        c.model.encoder.update({"hidden_dim": 32, "num_layers": 2, "num_heads": 2,
                                "mlp_dim": 64})
    elif arg == "fortunes":
        pass
    elif arg == "wiki_base":
        configs.use_text_tfds(c, "wikipedia/20230601.en", vocab_size=30522, seq_len=32)
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "bert", "preset": "base", "use_nsp": False, "type_vocab_size": 0})
        c.train.batch_size = 64
        c.train.steps = 1_000_000 // 64
        c.optim.update({"base_lr": 3e-5, "warmup_steps": 0, "weight_decay": 0.0,
                        "b2": 0.999, "eps": 1e-8})
    else:
        raise ValueError(f"unknown simcse preset {arg!r}; use one of {PRESETS}")
    return c
