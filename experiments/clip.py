"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision") on Fashion-MNIST images with template captions (``jssl.data.captions``).

Presets (``--config=experiments/clip.py:PRESET``):

tiny           CI smoke test: a few steps of a tiny ResNet + 1-layer text transformer.
               python -m jssl.main --config=experiments/clip.py:tiny --workdir=/tmp/t
               any CPU, seconds; no metric expected.
fashion_mnist  Pair each of the 60 000 training images with a random caption of its class
               ("a photo of a sneaker", "a grayscale photo of a trainer" ...: 10 templates ×
               3 names), train the towers with CLIP's loss (t init 1/0.07, clamped at 100),
               then on the 10 000 test images with 5 held-out templates: zero-shot accuracy
               (prompt ensemble) and image→text / text→image recall@1/5, and
               retrievals.png. Tiny ResNet image tower, 2-layer width-64 text tower,
               64-d shared space, AdamW lr 1e-3, wd 0.1, β2 0.98, batch 256, 800 steps.
               python -m jssl.main --config=experiments/clip.py:fashion_mnist \
                   --workdir=runs/clip_fmnist
               2-core CPU: about 10 min; zero-shot accuracy aimed at >= 70 % (measured
               numbers: docs/RESULTS.md once recorded).
fashion_captions
               The captioned-data pipeline (``jssl.data.image_text_tfds``) offline: the
               fashion_mnist setup, but the data is a local captions folder of Fashion-MNIST
               with 5 class captions per image (train templates for train images, held-out
               ones for test images), tokenised by a 192-piece SentencePiece BPE model, one
               caption drawn per image and epoch; evaluation: recall@1/5 on the first 1 000
               test images and their 5 000 captions. Captions name only the class, so
               same-class images tie: a perfect class-level model (ties broken at random)
               gets i→t 0.8 / 4.5 % and t→i 0.74 / 4.8 % recall@1/5; chance is 0.1 / 0.5 %.
               2-core CPU: 7.3 min of training (800 steps, load ~6); i→t 0.60 / 3.10 %,
               t→i 0.78 / 3.64 % recall@1/5. Not comparable to COCO numbers.
               python -m jssl.data.image_text_tfds --fashion_mnist_folder runs/fmc_data
               python -m jssl.data.image_text_tfds --train_tokenizer --name captions_folder \
                   --captions_dir runs/fmc_data --split train --out runs/fmc_data/tok.model \
                   --vocab_size 192 --model_type bpe
               python -m jssl.main --config=experiments/clip.py:fashion_captions \
                   --workdir=runs/clip_fashion_captions \
                   --config.data.captions_dir=runs/fmc_data \
                   --config.data.tokenizer_path=runs/fmc_data/tok.model
coco_b16       The paper's ViT-B/16 recipe (Table 20 and §2.5): image ViT-B/16 at 224 px,
               text transformer 12 layers × 512 wide, 8 heads, 77 tokens, 49 408-word BPE
               vocabulary, 512-d shared space; batch 32 768, AdamW lr 5e-4 (no batch
               scaling), wd 0.2, β1 0.9, β2 0.98, eps 1e-6, cosine (the paper warms up for 2 000
               of its ~390 k steps; here 10 % of the steps);
               t init 1/0.07 clamped at 100; 32 epochs (of CLIP's 400 M-pair WIT, here of
               TFDS coco_captions' 82 783 training images: 80 steps). Ring loss.
               Data (``jssl.data.image_text_tfds``): each image's shorter side resized to 256
               and centre-cropped on the host, one of its ~5 captions drawn per epoch and
               SentencePiece-tokenised; on the device a random square crop (90-100 % of the
               area) resized to 224. Evaluation: image→text / text→image recall@1/5 on the
               COCO 5k test images (all 25 010 captions; i2t counts any of the image's own
               captions). Once: prepare TFDS coco_captions (array_record) and train the
               tokenizer (vocab_size <= the text tower's 49 408):
               python -m jssl.data.image_text_tfds --train_tokenizer --name coco_captions \
                   --split train --out coco16k.model --vocab_size 16000
               python -m jssl.main --config=experiments/clip.py:coco_b16 --workdir=gs://... \
                   --config.data.tokenizer_path=coco16k.model
               Not measured (the pipeline is tested on a small local captions folder; COCO
               itself is not available offline).
               Paper: ViT-B/16 trained on WIT, 68.3 % ImageNet zero-shot (Table 11 of the
               paper; not comparable to COCO training).
"""
import ml_collections

from jssl import configs

PRESETS = ("tiny", "fashion_mnist", "fashion_captions", "coco_b16")
COCO_TRAIN = 82_783  # TFDS coco_captions 'train' (Karpathy split)


def base(method: str = "clip") -> ml_collections.ConfigDict:
    """The Fashion-MNIST CLIP/SigLIP setup (experiments/siglip.py builds on it)."""
    c = configs.base(method)
    c.model.embed_dim = 64
    c.model.text = ml_collections.ConfigDict(
        {"dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0})
    c.captions = ml_collections.ConfigDict({"classes": "fashion_mnist", "max_len": 12})
    c.augment = ml_collections.ConfigDict({"size": 28, "scale": (0.5, 1.0), "flip_p": 0.5})
    c.loss = ml_collections.ConfigDict({"impl": "gather", "block_size": 1024})
    c.optim = ml_collections.ConfigDict(
        {"name": "adamw", "base_lr": 1e-3, "lr_scaling": "none", "weight_decay": 0.1,
         "b1": 0.9, "b2": 0.98, "eps": 1e-6, "schedule": "cosine", "warmup_steps": 50,
         "end_lr_factor": 0.0})
    c.train.steps = 800
    c.eval = ml_collections.ConfigDict({"num_classes": 10, "recall_k": (1, 5)})
    return c


def make_tiny(c: ml_collections.ConfigDict) -> None:
    configs.make_tiny(c)
    c.model.embed_dim = 16
    c.model.text = ml_collections.ConfigDict(
        {"dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0})
    c.optim.warmup_steps = 1
    c.eval = ml_collections.ConfigDict({"num_classes": 10, "recall_k": (1, 5)})


def use_captions_folder(c: ml_collections.ConfigDict) -> None:
    """Fashion-MNIST written as a captions folder (5 class captions per image) read by the
    captioned-data pipeline with a SentencePiece BPE tokenizer; retrieval on 1 000 test images."""
    c.data.name = "captions_folder"
    c.data.modality = "image_text"
    c.data.captions_dir = ml_collections.FieldReference(None, field_type=str)  # required
    c.data.tokenizer_path = ml_collections.FieldReference(None, field_type=str)  # required
    c.data.in_memory = False
    c.model.text.vocab_size = 192
    c.captions.max_len = 24
    c.eval.retrieval_images = 1_000


def use_b16_scale(c: ml_collections.ConfigDict, data: str, train_examples: int) -> None:
    """ViT-B/16 image tower at 224 px, CLIP's B/16 text tower, batch 32 768, ring loss."""
    c.data.name = data
    c.data.modality = "image_text"  # jssl.data.image_text_tfds: images + tokenised captions
    # required: a SentencePiece model from python -m jssl.data.image_text_tfds --train_tokenizer
    c.data.tokenizer_path = ml_collections.FieldReference(None, field_type=str)
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.in_memory = False
    c.data.worker_count = 16
    c.model.encoder = ml_collections.ConfigDict(
        {"name": "vit", "preset": "b16", "pool": "cls", "dtype": "bfloat16"})
    c.model.embed_dim = 512
    c.model.text = ml_collections.ConfigDict(
        {"vocab_size": 49_408, "dim": 512, "depth": 12, "num_heads": 8, "mlp_ratio": 4.0,
         "dtype": "bfloat16"})
    c.captions.max_len = 77
    c.augment = ml_collections.ConfigDict(
        {"size": 224, "resize": 256, "scale": (0.9, 1.0), "flip_p": 0.0})
    c.loss.impl = "ring"
    c.train.batch_size = 32_768
    c.train.log_every = 10
    c.checkpoint.every = 50
    c.train.steps = max(1, 32 * train_examples // c.train.batch_size)
    c.eval.retrieval_images = 5_000  # the COCO 5k test split (Karpathy)


def get_config(arg: str = "fashion_mnist") -> ml_collections.ConfigDict:
    c = base()
    c.name = f"clip_{arg}"
    if arg == "tiny":
        make_tiny(c)
    elif arg == "fashion_mnist":
        pass
    elif arg == "fashion_captions":
        use_captions_folder(c)
    elif arg == "coco_b16":
        use_b16_scale(c, "coco_captions", COCO_TRAIN)
        c.optim = ml_collections.ConfigDict(
            {"name": "adamw", "base_lr": 5e-4, "lr_scaling": "none", "weight_decay": 0.2,
             "b1": 0.9, "b2": 0.98, "eps": 1e-6, "schedule": "cosine",
             "warmup_steps": c.train.steps // 10, "end_lr_factor": 0.0})
    else:
        raise ValueError(f"unknown clip preset {arg!r}; use one of {PRESETS}")
    return c
