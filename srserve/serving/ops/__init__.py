"""Operations: metrics, GPU telemetry, autoscaling on queued work, job logs."""
