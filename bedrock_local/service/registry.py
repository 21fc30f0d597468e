"""Operations by their model name. A service module registers a plain function
`(ctx, params) -> result` with @operation("Name") (an `async def` one for operations that wait on
a serving node); the api layer looks it up here."""

from collections.abc import Callable

OPERATIONS: dict[str, Callable] = {}


def operation(name: str):
    def register(function):
        if name in OPERATIONS:
            raise ValueError(f"operation {name} registered twice")
        OPERATIONS[name] = function
        return function
    return register

