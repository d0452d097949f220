"""The `srserve` command line."""
