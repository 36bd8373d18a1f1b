"""params.yaml read once into typed, frozen sections that reject unknown keys and impossible values."""
