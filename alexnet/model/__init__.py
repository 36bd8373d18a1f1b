"""The network of Figure 2 (§3): two towers, ReLU, local response normalisation, overlapping pooling."""
