"""Operations by their model name. A service module registers a plain function
`(ctx, params) -> result` with @operation("Name"); the api layer looks it up here."""

from collections.abc import Callable

OPERATIONS: dict[str, Callable] = {}


def operation(name: str):
    def register(function):
        if name in OPERATIONS:
            raise ValueError(f"operation {name} registered twice")
        OPERATIONS[name] = function
        return function
    return register


def load_operations() -> dict[str, Callable]:
    """Import every service module, so that each registers its operations."""
    from bedrock_local.service import (custom_models, customization_jobs, foundation_models,  # noqa: F401
                                       invocation_jobs, model_copy, tags)
    return OPERATIONS
