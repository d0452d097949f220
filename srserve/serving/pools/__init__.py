"""The GPU replica pools: text encoder, sketch (large model), render (small model), colocated."""
