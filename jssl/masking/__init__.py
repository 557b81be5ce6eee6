"""Pretext-target makers: BERT MLM, T5 span corruption, MAE, BEiT blocks, wav2vec 2.0 spans.

Every function here is pure JAX: the result depends only on the arguments and the
PRNG key, and the function can be jitted once its hyperparameters (sizes, rates,
ids) are fixed as Python values (close over them with ``functools.partial`` or
pass them as ``static_argnames``; give ``special_ids`` as a tuple then, so it is
hashable). Keys may be new-style typed keys (``jax.random.key``) or legacy
``uint32[2]`` keys (``jax.random.PRNGKey``). Hyperparameters are checked eagerly
and a bad one raises ``ValueError`` naming the argument, its value and a fix.

Batching convention: ``random_patch_mask``, ``block_mask`` and ``span_mask`` take
``batch_size``; ``None`` returns one unbatched sample, an int returns that many
independent samples stacked on a leading axis (the key is split per row).
``bert_mask`` works elementwise on any ``[..., T]`` shape and ``t5_span_corruption``
on one ``[L]`` row or a ``[B, L]`` batch.

Reference implementations matched (see each docstring for the deviations):
HF ``DataCollatorForLanguageModeling`` (BERT), seqio/T5 ``random_spans_noise_mask``
+ ``noise_span_to_unique_sentinel`` (T5), MAE ``random_masking``, BEiT
``MaskingGenerator``, fairseq/HF wav2vec 2.0 ``compute_mask_indices`` (static spans).
"""
from jssl.masking.image import block_mask, random_patch_mask
from jssl.masking.speech import span_mask
from jssl.masking.text import bert_mask, t5_output_lengths, t5_raw_length, t5_span_corruption

__all__ = [
    "bert_mask",
    "t5_span_corruption",
    "t5_output_lengths",
    "t5_raw_length",
    "random_patch_mask",
    "block_mask",
    "span_mask",
]
