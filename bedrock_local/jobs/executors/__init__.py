"""Executors that run a handler's heavy work: in the worker process (local.py), or on a Ray cluster
(ray_cluster.py). The worker picks one from its settings (`for_settings`) and hands it to each handler
through the job's context (`ctx.executor`); handlers never import an executor."""


def for_settings(settings):
    """The executor of a worker with these settings: Ray's when `ray_address` is set, else the local one."""
    if settings.ray_address:
        from bedrock_local.jobs.executors.ray_cluster import RayExecutor
        return RayExecutor()
    from bedrock_local.jobs.executors.local import LocalExecutor
    return LocalExecutor()
