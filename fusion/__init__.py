"""fusion: video predictions from per-view scores, stream fusion and reports."""
