"""The plumbing every package shares: atomic writes and locks, progress lines."""
