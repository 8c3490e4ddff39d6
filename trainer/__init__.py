"""trainer: spatial and temporal two-stream training from flow stores."""
