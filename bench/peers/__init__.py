"""PyTorch peers of jssl's CPU train steps (benchmark only: ``bench/requirements.txt``).

Each peer rebuilds the model, loss and optimizer of one jssl CPU preset in plain PyTorch
with the same shapes, dtype (float32) and hyper-parameters, and exposes
``make_step(config, views) -> callable`` doing one full update (forward, backward,
optimizer, any EMA) on fixed input views and returning the loss; the callable's
``num_params`` is the peer's trainable parameter count, which ``bench/compare.py`` checks
against jssl's. A peer whose method prepares more than views also defines
``torch_inputs(inputs, torch) -> dict`` converting jssl's prepared arrays (NHWC → NCHW,
ids → int64). ``bench/compare.py`` times it next to jssl's update on the very same inputs.
"""
