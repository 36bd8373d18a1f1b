"""DVC stage entry points: each parses the paths dvc.yaml hands it and calls one library function."""
