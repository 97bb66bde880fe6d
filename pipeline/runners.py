"""Task runners for fan-out: local by default, a Dask or Ray cluster with the optional extras."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

RUNNERS = ("local", "dask", "ray")


def make_runner(kind: str = "local", workers: int = 2, address: str | None = None):
    """``local``: threads each driving one stage process; ``dask``/``ray``: a cluster (``address`` or local).

    prefect-dask is in requirements.lock (tests/test_flows_dask.py runs it); Ray needs ``pip install -e '.[ray]'``.
    Without the package this says which extra to install.
    """
    if kind == "local":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError("the dask runner needs the extra: pip install -e '.[dask]'") from exc
        if address:
            return DaskTaskRunner(address=address)
        # LocalCluster's dashboard listens on every interface by default (":8787"); servers here bind loopback
        # unless told otherwise. Another cluster holding the port gets a free one (Dask logs the address).
        local = {"n_workers": workers, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:8787"}
        return DaskTaskRunner(cluster_kwargs=local)
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:
            raise RuntimeError("the ray runner needs the extra: pip install -e '.[ray]'") from exc
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"unknown task runner {kind!r}; choose one of {', '.join(RUNNERS)}")
