"""Batches from the shards: which images form a batch, the §4.1 augmentations as pure batch functions,
the worker processes that cut them and the finish on the training device."""
