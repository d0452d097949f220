"""Stage profiling of real-size model architectures (random weights, no download) on a device."""
