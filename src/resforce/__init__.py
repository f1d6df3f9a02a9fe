"""resforce: Resampling Forcing for autoregressive video diffusion."""
