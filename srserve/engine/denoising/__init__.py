"""The denoising loop's parts: the schedule, the scheduler's state, the switch, moving a latent between
models, step caches."""
