"""What the load generator sends and the planner simulates alike: request mixes, arrival processes,
the request plan and SLO policy, per-request records and their stage timeline, and the statistics
that summarise a run (measured or predicted)."""
