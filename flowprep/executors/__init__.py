"""Where the per-video work runs: a CPU process pool, a batched device run, Dask tasks."""
