"""The local executor: a job's work runs in the worker process that claimed it."""


class LocalExecutor:
    """Runs a handler's work right here. Every executor has these two methods."""

    def record_runner(self, ctx, build, source, invocation_type: str):
        """What turns a batch job's chunks of records into output lines: `build(settings, objects,
        source, invocation_type)` (a batch_inference.RecordRunner), made in this process."""
        return build(ctx.settings, ctx.objects, source, invocation_type)

    def run_job(self, ctx, run) -> None:
        """Run a job's whole work, `run(ctx)` (a customization's training), in this process."""
        run(ctx)
