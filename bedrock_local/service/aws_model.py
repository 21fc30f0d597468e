"""The botocore descriptions of the APIs this server speaks (`bedrock`, `bedrock-runtime`), each loaded
once per process: the api codec takes its routes and shapes from them, the service layer the members
of its List operations (service/common.py, `list_resources`)."""

import functools

from botocore.loaders import Loader, create_loader
from botocore.model import ServiceModel


@functools.cache
def _loader() -> Loader:
    return create_loader()


@functools.cache
def load_service_model(name: str) -> ServiceModel:
    return ServiceModel(_loader().load_service_model(name, "service-2"), name)


@functools.cache
def paginators(name: str) -> dict:
    """The paginated operations of service `name`: operation -> input_token, output_token, limit_key, result_key."""
    return _loader().load_service_model(name, "paginators-1")["pagination"]
