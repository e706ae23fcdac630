"""Training: one step shared by every loop, on cached features or end to end, on one process or many.

step (the one training step and accuracy), fit (the loops of notebooks 02-04), unfreezing and
cached_unfreezing (gradual unfreezing, notebook 05), unfreezing_metrics (what such a run achieves),
trainer (end-to-end training under torchrun, notebook 07) with distributed, run_checks, lr_schedule,
checkpoints and trainer_eval.
"""
