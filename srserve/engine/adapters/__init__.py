"""LoRA adapters: as configured and requested (spec), and as checked, loaded, fused and kept by the engine (loading)."""
