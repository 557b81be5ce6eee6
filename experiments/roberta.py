"""RoBERTa (Liu et al. 2019): BERT's masked LM with dynamic masking, no NSP, full sentences.

Presets (``--config=experiments/roberta.py:PRESET``):

tiny          CI smoke test: 4 steps of a 2-layer, 32-wide encoder on four fortune categories.
              python -m jssl.main --config=experiments/roberta.py:tiny --workdir=/tmp/t
              any CPU, seconds; no metric expected.
fortunes      The offline CPU preset: the Debian fortunes split and tokenizer of bert.py, the
              training fortunes packed as one stream ``d0 [SEP] d1 [SEP] ...`` cut into rows of
              [CLS] + 63 tokens (FULL-SENTENCES), masks drawn on the device every step from the
              step key (dynamic), no NSP and no segment embeddings; the same 4-layer 128-wide
              encoder as bert.py:fortunes but a larger batch (128) and AdamW β2 0.98.
              python -m jssl.main --config=experiments/roberta.py:fortunes --workdir=runs/roberta
              2-core CPU: a few minutes; numbers measured in docs/RESULTS.md.
c4_base       The paper's RoBERTa-base recipe (Table 9): 12 × 768, batch 8k × 512 tokens,
              500k steps, Adam peak lr 6e-4, β = (0.9, 0.98), ε 1e-6, weight decay 0.01, 24k
              warm-up steps, dropout 0.1. Data: TFDS ``c4/en`` (the paper: BookCorpus,
              Wikipedia, CC-News, OpenWebText, Stories), tokenized on the host by the
              SentencePiece model in ``--config.data.tokenizer_path`` (paper: 50k byte BPE).
              Deviations: cosine decay (paper: linear), one document per row (no cross-document
              packing on the TFDS path). Untested end to end: builds and traces only.
              fairseq's released RoBERTa-base: 87.6 MNLI-m after fine-tuning; not measured.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fortunes", "c4_base")


def base() -> ml_collections.ConfigDict:
    c = configs.text_base("roberta", packing="contiguous")
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "bert", "preset": "tiny", "hidden_dim": 128, "num_layers": 4, "num_heads": 4,
         "mlp_dim": 512, "use_nsp": False, "type_vocab_size": 0})
    c.masking = ml_collections.ConfigDict(
        {"rate": 0.15, "mask_replace_prob": 0.8, "random_replace_prob": 0.1, "dynamic": True,
         "max_predictions": 20})
    c.train.batch_size = 128
    return c


def get_config(arg: str = "fortunes") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"roberta_{arg}"
    if arg == "tiny":
        configs.make_text_tiny(c)
        c.model.encoder.update({"hidden_dim": 32, "num_layers": 2, "num_heads": 2,
                                "mlp_dim": 64})
    elif arg == "fortunes":
        pass
    elif arg == "c4_base":
        configs.use_text_tfds(c, "c4/en", vocab_size=50265, seq_len=512)
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "bert", "preset": "roberta_base", "dtype": "bfloat16"})
        c.masking.max_predictions = 80
        c.train.batch_size = 8192
        c.train.steps = 500_000
        c.optim.update({"base_lr": 6e-4, "b2": 0.98, "eps": 1e-6, "warmup_steps": 24_000})
    else:
        raise ValueError(f"unknown roberta preset {arg!r}; use one of {PRESETS}")
    return c
