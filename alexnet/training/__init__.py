"""One member (§5): the training loop with exact resume, the paper's SGD and schedule, checkpoints,
data-parallel replicas (DDP) and device placement. The resume fingerprint covers this package's import
closure, so code outside it never invalidates a checkpoint."""
