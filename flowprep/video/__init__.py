"""Decoding videos: containers and their frame-count rules, the frame reader."""
