"""service: one module per resource family, with the rules of each operation (no HTTP, no SQL of its own).
Each module registers its operations with `registry.operation`; `load_operations` imports them all."""

from collections.abc import Callable


def load_operations() -> dict[str, Callable]:
    """Import every service module (the runtime operations included), so that each registers its operations."""
    from bedrock_local.service import (count_tokens, custom_models, customization_jobs, deployments,  # noqa: F401
                                       evaluation_jobs,
                                       foundation_models, inference_profiles, invocation_jobs, invocation_logging,
                                       model_copy, model_import_jobs, provisioned_throughput, runtime, tags)
    from bedrock_local.service.registry import OPERATIONS
    return OPERATIONS
