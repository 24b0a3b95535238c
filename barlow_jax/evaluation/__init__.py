"""Evaluation of a frozen backbone; `python -m barlow_jax.evaluate` is its command line.

Read top-down (each module imports only those above it):
- `features`: backbone building / loading (through `barlow_jax.checkpointing`), labelled
  in-memory splits, features, top-k accuracy and per-batch top-1 / top-5 counts summed over eval
  batches (on devices through `barlow_jax.parallel`).
- `knn`: the weighted kNN classifier, and the kNN monitor of a pretraining run (it reads the
  state's backbone; nothing of the training loop is imported).
- `linear_probe`: the linear probe, "features" and "reference" protocols.
- `finetune`: backbone + head fine-tuning, labelled subsets (semi-supervised).
- `baselines`: a table row (probe + kNN), BN recalibration, the supervised reference.
- `final_table`: the default job's results table, its targets, the results files.
- `modes`: the "linear", "knn" and "semisup" modes of the command line.
- `voc07`: average precision (11-point and all-point) and the per-class SVM protocol.
- `transfer`: frozen-feature transfer (Barlow Twins paper, Sec. 4, Table 3): a linear probe on
  other labelled datasets, and VOC07 multi-label classification with per-class linear SVMs.
"""
