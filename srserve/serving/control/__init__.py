"""The control plane: job states and transitions, the PostgreSQL job store, artifacts, orchestration."""
