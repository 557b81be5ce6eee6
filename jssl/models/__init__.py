"""Flax linen models: backbones, heads and pretext networks. Import submodules directly."""
