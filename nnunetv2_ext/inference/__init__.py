"""Prediction beyond nnUNetv2_predict: from a subset of a multi-encoder model's modalities (subset_predict)."""
