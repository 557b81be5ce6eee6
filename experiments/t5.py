"""T5 (Raffel et al. 2020): span-corruption pretraining of an encoder–decoder.

Presets (``--config=experiments/t5.py:PRESET``):

tiny          CI smoke test: 4 steps of a 2+2-layer, 32-wide T5 on four fortune categories.
              python -m jssl.main --config=experiments/t5.py:tiny --workdir=/tmp/t
              any CPU, seconds; no metric expected.
fortunes      The offline CPU preset: the fortunes stream (split and tokenizer as bert.py, plus
              16 sentinel pieces) cut into raw rows of 70 tokens, whose corrupted inputs fill
              64 (T5's ``random_spans_helper``); noise density 0.15, mean span 3; a 4+2-layer,
              128-wide T5 (v1.1 blocks: gated GELU, RMSNorm, relative position buckets) from
              scratch, batch 64, AdamW lr 1e-3, 1000 steps. Reports held-out span-corruption
              accuracy and perplexity, and category linear probes on the encoder (pretrained vs
              random init, 100 % / 10 % labels).
              python -m jssl.main --config=experiments/t5.py:fortunes --workdir=runs/t5_fortunes
              2-core CPU: see docs/RESULTS.md for the measured time and numbers.
c4_base       The paper's T5.1.1-base recipe on C4 (§3.1.2, 3.7): inputs 512 tokens (raw rows
              of 568), targets 114, batch 128, 2^19 steps, 100 sentinels (32 100-piece
              vocabulary from ``--config.data.tokenizer_path``), dropout 0 in pretraining.
              Deviation: AdamW with linear warm-up + cosine (jssl has no Adafactor with
              inverse-square-root decay). Data: TFDS ``c4/en`` documents, one per row
              (``jssl.data.text_tfds``), not the paper's packed stream.
              Untested end to end: builds and traces only.
"""
import ml_collections

from jssl import configs
from jssl.masking.text import t5_raw_length

PRESETS = ("tiny", "fortunes", "c4_base")


def _rows(c: ml_collections.ConfigDict, inputs_length: int) -> None:
    """Raw rows whose corrupted inputs (with EOS) fill ``inputs_length``."""
    c.data.seq_len = t5_raw_length(inputs_length, c.masking.noise_density,
                                   c.masking.mean_span_length)[0]


def base() -> ml_collections.ConfigDict:
    c = configs.text_base("t5", packing="contiguous")
    c.data.cls = False
    c.data.num_sentinels = 16
    c.masking = ml_collections.ConfigDict({"noise_density": 0.15, "mean_span_length": 3.0})
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "t5", "preset": "tiny", "d_model": 128, "num_heads": 4, "head_dim": 32,
         "d_ff": 512, "num_encoder_layers": 4, "num_decoder_layers": 2, "dropout_rate": 0.1})
    _rows(c, 64)
    return c


def get_config(arg: str = "fortunes") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"t5_{arg}"
    if arg == "tiny":
        configs.make_text_tiny(c)
        c.model.encoder.update({"d_model": 32, "num_heads": 2, "head_dim": 16, "d_ff": 64,
                                "num_encoder_layers": 2, "num_decoder_layers": 2})
        _rows(c, 32)
    elif arg == "fortunes":
        pass
    elif arg == "c4_base":
        configs.use_text_tfds(c, "c4/en", vocab_size=32100, seq_len=568)
        c.data.cls = False
        c.data.num_sentinels = 100
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "t5", "preset": "t5_v1_1_base", "dropout_rate": 0.0, "dtype": "bfloat16"})
        _rows(c, 512)
        c.train.batch_size = 128
        c.train.steps = 2 ** 19
        c.optim.update({"base_lr": 1e-3, "warmup_steps": 10_000, "weight_decay": 0.0})
    else:
        raise ValueError(f"unknown t5 preset {arg!r}; use one of {PRESETS}")
    return c
