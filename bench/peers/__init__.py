"""PyTorch peers of jssl's CPU train steps (benchmark only: ``bench/requirements.txt``).

Each peer rebuilds the model, loss and optimizer of one jssl CPU preset in plain PyTorch
with the same shapes, dtype (float32) and hyper-parameters, and exposes
``make_step(config, views) -> callable`` doing one full update (forward, backward,
optimizer, any EMA) on fixed input views. ``bench/compare.py`` times it next to jssl's
update on the very same views.
"""
