"""trainer: spatial and temporal two-stream training from flow stores.

Modules (torch is imported only inside functions, so `import trainer` and `trainer --help` stay fast):

- ``config``      the frozen TrainConfig: TOML + --set, stream presets, derived values
- ``models``      torchvision backbones, weights from the torch cache or a file, cross-modality init
- ``transforms``  crop geometry, flips (flow x negated), normalisation, test views
- ``data``        training samples and test videos from a flowprep.FlowStore
- ``train``       train_one_epoch, run (training, selection on the hold-out, checkpoints, resume), test
- ``evaluation``  the test protocol and the per-epoch validation
- ``checkpoint``  the checkpoint files (only writer and reader)
- ``scores``      the score files (only writer and reader)
- ``cli``         `trainer run | test | config | configs`
"""
