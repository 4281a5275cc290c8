"""SeedVR / SeedVR2: NaDiT (3B, 7B), the causal video VAE, checkpoint loading and the upscale pipeline."""
