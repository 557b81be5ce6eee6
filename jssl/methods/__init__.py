"""Self-supervised methods, one file each. ``get_method(name)`` returns the class."""
from __future__ import annotations

import importlib

#: method name -> "module:Class"; modules are imported on demand.
REGISTRY = {
    "simclr": "jssl.methods.simclr:SimCLR",
    "byol": "jssl.methods.byol:BYOL",
    "mocov2": "jssl.methods.mocov2:MoCoV2",
    "supervised": "jssl.methods.supervised:Supervised",
    "distill": "jssl.methods.distill:Distill",
    "mocov3": "jssl.methods.mocov3:MoCoV3",
    "dino": "jssl.methods.dino:DINO",
    "mae": "jssl.methods.mae:MAE",
    "rotnet": "jssl.methods.rotnet:RotNet",
    "jigsaw": "jssl.methods.jigsaw:Jigsaw",
    "colorization": "jssl.methods.colorization:Colorization",
    "context": "jssl.methods.context:ContextPrediction",
    "clip": "jssl.methods.clip:CLIP",
    "siglip": "jssl.methods.siglip:SigLIP",
    "bert": "jssl.methods.bert:BERT",
    "roberta": "jssl.methods.bert:BERT",
    "gpt": "jssl.methods.gpt:GPT",
    "simcse": "jssl.methods.simcse:SimCSE",
    "t5": "jssl.methods.t5:T5",
    "word2vec": "jssl.methods.word2vec:Word2Vec",
    "wav2vec2": "jssl.methods.wav2vec2:Wav2Vec2",
    "ijepa": "jssl.methods.ijepa:IJEPA",
    "vqvae": "jssl.methods.vqvae:VQVAE",
    "beit": "jssl.methods.beit:BEiT",
}


def get_method(name: str):
    if name not in REGISTRY:
        raise ValueError(f"config.method={name!r} is unknown; use one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
