"""Training: patch sampling and MONAI augmentation, Dice+CE with deep supervision, the
loop with exact resume, checkpoints, DDP. Entry point: :func:`medmamba.api.train`.

Modules: config (TrainingConfig), setup (WORK -> RunSpec), trainer (the loop), data
(batches as a pure function of the step), augment, loss, optim (poly lr), checkpoint,
splits, distributed, progress (log + plot), paths.
"""
