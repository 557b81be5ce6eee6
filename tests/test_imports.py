"""`from jssl import losses` must not pull in the trainer, models or data stack."""
import subprocess
import sys

HEAVY = ("flax", "optax", "orbax", "grain", "tensorflow", "tensorflow_datasets",
         "ml_collections", "jssl.train", "jssl.models", "jssl.data", "jssl.augment")


def test_losses_import_is_light():
    code = ("import sys; from jssl import losses; "
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = [m for m in out.stdout.strip().split(",") if m]
    assert loaded == [], f"importing jssl.losses loaded {loaded}"


def test_public_loss_names():
    from jssl import losses

    for name in ["info_nce", "nt_xent", "moco", "moco_update_queue", "clip", "siglip", "byol",
                 "dino", "dino_update_center", "masked_lm", "next_token", "span_corruption", "mae",
                 "wav2vec2", "codebook_diversity", "classification"]:
        assert callable(getattr(losses, name)), name
