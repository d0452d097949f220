"""What queued work costs and what a request may cost: pool work, the load switch, request limits."""
