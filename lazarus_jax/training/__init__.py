"""Training: the dual-reward and GRPO losses, the jitted sharded step and the loop, checkpoints, the mesh,
ahead-of-time compilation, the compilation cache and the metrics log."""
