"""GPT (Radford et al. 2018/2019): next-token prediction with a causal decoder; ``jssl generate``.

Presets (``--config=experiments/gpt.py:PRESET``):

tiny          CI smoke test: 4 steps of a 2-layer, 32-wide decoder on four fortune categories.
              python -m jssl.main --config=experiments/gpt.py:tiny --workdir=/tmp/t
              any CPU, seconds; no metric expected.
fortunes      The offline CPU preset: the Debian fortunes split and tokenizer of bert.py, the
              training fortunes as one stream ``d0 [SEP] d1 [SEP] ...`` cut into rows of 64
              tokens (no [CLS]); a 4-layer 128-wide pre-LN decoder (dropout 0.1), batch 64,
              AdamW lr 1e-3 β2 0.98, cosine. Reports held-out perplexity next to unigram and
              bigram baselines on the same tokens, and category linear probes.
              python -m jssl.main --config=experiments/gpt.py:fortunes --workdir=runs/gpt
              jssl generate --workdir=runs/gpt --prompt="A fool" --temperature=0.8 --top_k=40
              2-core CPU: a few minutes; numbers measured in docs/RESULTS.md.
owt_gpt2      GPT-2 small (124M): 12 × 768, context 1024, batch 512 × 1024 tokens (0.5M, GPT-3
              paper Table 2.1 for the 125M model), AdamW lr 6e-4, β = (0.9, 0.95), weight decay
              0.1, 2000 warm-up steps, cosine to 10 %, grad clip 1.0, 600k steps (nanoGPT's
              GPT-2 reproduction; the GPT-2 paper gives no optimizer settings). Data: TFDS
              ``c4/en`` (GPT-2: WebText; nanoGPT: OpenWebText), tokenized on the host by
              ``--config.data.tokenizer_path`` (GPT-2: 50257 byte BPE). One document a row (no
              cross-document packing on the TFDS path). Untested end to end: builds and traces.
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fortunes", "owt_gpt2")


def base() -> ml_collections.ConfigDict:
    c = configs.text_base("gpt", packing="contiguous")
    c.data.cls = False
    c.model = ml_collections.ConfigDict()
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "gpt", "preset": "tiny", "hidden_dim": 128, "num_layers": 4, "num_heads": 4,
         "mlp_dim": 512, "dropout_rate": 0.1})
    return c


def get_config(arg: str = "fortunes") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"gpt_{arg}"
    if arg == "tiny":
        configs.make_text_tiny(c)
        c.model.encoder.update({"hidden_dim": 32, "num_layers": 2, "num_heads": 2,
                                "mlp_dim": 64, "dropout_rate": 0.0})
    elif arg == "fortunes":
        pass
    elif arg == "owt_gpt2":
        configs.use_text_tfds(c, "c4/en", vocab_size=50257, seq_len=1024)
        c.data.cls = False
        c.model.encoder = ml_collections.ConfigDict(
            {"name": "gpt", "preset": "gpt2_small", "dropout_rate": 0.0, "dtype": "bfloat16"})
        c.train.batch_size = 512
        c.train.steps = 600_000
        c.optim.update({"base_lr": 6e-4, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
                        "warmup_steps": 2000, "end_lr_factor": 0.1, "clip_grad_norm": 1.0})
    else:
        raise ValueError(f"unknown gpt preset {arg!r}; use one of {PRESETS}")
    return c
