"""mmftrain: the M4C model, its loss and metrics, and a trainer with exact resume and DDP.

Importing the package is cheap (no torch); the submodules `models`, `trainer`, `run` import torch.
Public API: `mmftrain.metrics` (normalize_answer, textvqa_accuracy, stvqa_accuracy, stvqa_anls),
`mmftrain.models.build_m4c`, `mmfconfig.resolve.build_config` (also as `mmftrain.config`), `mmftrain.run.run`,
`mmftrain.cli.run_from_argv`.
"""
