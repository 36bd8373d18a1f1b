"""The data stages: find and check the images (any class-folder tree, ILSVRC-2012 tarballs, the synthetic
demo), resize them into shards (§2) and the training-set statistics (mean image, RGB PCA)."""
