"""The live side of load generation: gRPC/HTTP clients, the load runner, local deployments, the
planner's calibration and validation against a deployment, layout comparison, soak and plots.

What a run sends and how it is summarised (mixes, arrivals, records, statistics) is srserve.workload."""
