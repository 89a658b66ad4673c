"""Datasets, tokenizers and tf.data input pipelines."""
