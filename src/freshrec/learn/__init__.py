"""Training: optimizers, schedules, the online learner and checkpoints.

Only this package mutates model parameters; serving reads published versions.
"""
