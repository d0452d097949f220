"""Reading job timelines: per-stage busy times, pipeline efficiency, a text Gantt chart."""
