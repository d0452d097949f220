"""srserve.v1 protocol buffers; generated modules are committed (regenerate: `make proto`)."""
