"""Model components: their configs read without weights, loaded components shared per process, attention backends."""
