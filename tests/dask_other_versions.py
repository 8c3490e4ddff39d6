"""A Dask worker preload for tests (`dask worker --preload tests/dask_other_versions.py`): the worker shows
another OpenCV version in its fingerprint, as a worker installed from other packages would. A test hook
kept in tests: the library has no branch for it."""


def dask_setup(worker) -> None:
    import flowprep.executors.cluster as cluster

    real = cluster.worker_versions

    def other_versions(backend: str):
        return tuple((k, "0.0-other" if k == "opencv" else v) for k, v in real(backend))

    cluster.worker_versions = other_versions
