"""Prefect flows over the alexnet library: they orchestrate, the library computes."""
