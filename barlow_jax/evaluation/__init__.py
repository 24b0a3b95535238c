"""Evaluation protocols beyond the pretraining dataset.

- `transfer`: frozen-feature transfer (Barlow Twins paper, Sec. 4, Table 3): a linear probe on
  other labelled datasets, and VOC07 multi-label classification with per-class linear SVMs.
- `voc07`: average precision (11-point and all-point) and the per-class SVM protocol.
"""
