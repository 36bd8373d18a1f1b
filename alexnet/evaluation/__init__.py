"""The predict side: a trained member's probabilities (centre and ten patches, §4.1), the ensemble's
metrics and report files (§6), Figures 3 and 4."""
