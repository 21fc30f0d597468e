"""An OpenAPI 3.1 description of what this server answers, generated from the botocore service models
(`bedrock` and `bedrock-runtime`) for exactly the operations the registry serves: each operation's
route (uri labels, greedy ones included), query and header members, JSON body with the model's
constraints (required members, patterns, lengths, ranges, enums, unions), and one response for its
success code plus one per modelled error status. Served at GET /openapi.json so that API fuzzers
(schemathesis) and client generators can read it; nothing here is written per operation.
"""

from botocore.model import OperationModel, ServiceModel, Shape

OPENAPI_VERSION = "3.1.0"
EVENT_STREAM = "application/vnd.amazon.eventstream"
# Errors the protocol layer answers for any operation, whether or not the operation lists them:
# a request that cannot be read or does not satisfy the model is a ValidationException (400).
COMMON_ERRORS = ("ValidationException",)

_NUMBERS = {"integer": "integer", "long": "integer", "float": "number", "double": "number"}


class _Schemas:
    """JSON Schemas of one service model's shapes; structures (which may contain themselves) become
    components referenced by name, the rest are written inline.

    Requests get the model's value constraints (the service enforces them). Answers get the types and
    required members only: the model's lengths, patterns and enums of output members are documentation
    that AWS itself does not keep (its foundation model names pass the 20 characters of `BrandedName`, and
    new enum values appear), so a client must not rely on them and the document does not promise them."""

    def __init__(self, service: ServiceModel, components: dict, constraints: bool = True):
        self.service = service
        self.components = components
        self.constraints = constraints
        self.prefix = f"{service.service_name}." if constraints else f"{service.service_name}.output."

    def of(self, shape: Shape) -> dict:
        kind = shape.type_name
        if kind == "structure" and not shape.is_document_type:
            key = self.prefix + shape.name
            if key not in self.components:
                self.components[key] = {}  # placeholder: a shape that contains itself refers to it
                self.components[key] = self._structure(shape)
            return {"$ref": f"#/components/schemas/{key}"}
        if kind == "structure":  # a document: any JSON value
            return {}
        if kind == "list":
            schema = {"type": "array", "items": self.of(shape.member)}
            self._sizes(schema, shape, "minItems", "maxItems")
            return schema
        if kind == "map":
            schema = {"type": "object", "additionalProperties": self.of(shape.value)}
            keys = self.scalar(shape.key)
            keys.pop("type", None)
            if keys:
                schema["propertyNames"] = keys
            self._sizes(schema, shape, "minProperties", "maxProperties")
            return schema
        return self.scalar(shape)

    def scalar(self, shape: Shape) -> dict:
        kind = shape.type_name
        meta = shape.metadata
        if kind == "string":
            if shape.serialization.get("jsonvalue"):
                return {"type": "string", "contentEncoding": "base64"}
            schema: dict = {"type": "string"}
            if not self.constraints:
                return schema
            if meta.get("enum"):
                schema["enum"] = list(meta["enum"])
            if meta.get("pattern"):  # the service matches the whole value
                schema["pattern"] = f"^(?:{meta['pattern']})$"
            self._sizes(schema, shape, "minLength", "maxLength")
            return schema
        if kind in _NUMBERS:
            schema = {"type": _NUMBERS[kind]}
            self._sizes(schema, shape, "minimum", "maximum")
            return schema
        if kind == "boolean":
            return {"type": "boolean"}
        if kind == "timestamp":
            return {"type": "string", "format": "date-time"}
        if kind == "blob":  # base64 in a JSON document
            return {"type": "string", "contentEncoding": "base64"}
        return {}

    def _sizes(self, schema: dict, shape: Shape, low: str, high: str) -> None:
        if not self.constraints:
            return
        if shape.metadata.get("min") is not None:
            schema[low] = shape.metadata["min"]
        if shape.metadata.get("max") is not None:
            schema[high] = shape.metadata["max"]

    def _structure(self, shape: Shape, members: list[str] | None = None) -> dict:
        names = members if members is not None else list(shape.members)
        union = bool(shape.metadata.get("union"))
        properties = {}
        for n in names:
            member = self.of(shape.members[n])
            if self.constraints and not union and n not in shape.required_members:
                member = {"anyOf": [member, {"type": "null"}]}  # the service reads a null member as absent
            properties[shape.members[n].serialization.get("name", n)] = member
        schema: dict = {"type": "object", "properties": properties}
        required = [shape.members[n].serialization.get("name", n) for n in shape.required_members if n in names]
        if required:
            schema["required"] = required
        if union and self.constraints:  # exactly one member is set (members it does not know are ignored)
            schema["oneOf"] = [{"required": [name]} for name in properties]
        return schema

    def body(self, shape: Shape, members: list[str]) -> dict:
        """The JSON body of a request or response: the members that have no other location."""
        return self._structure(shape, members)


def _parameters(schemas: _Schemas, shape: Shape | None) -> list[dict]:
    parameters = []
    for name, member in (shape.members.items() if shape is not None else ()):
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            parameters.append({"name": wire, "in": "path", "required": True, "schema": schemas.of(member)})
        elif location == "querystring" and member.type_name != "map":
            parameters.append({"name": wire, "in": "query", "required": name in shape.required_members,
                               "schema": schemas.of(member), **({"explode": True} if member.type_name == "list" else {})})
        elif location == "header" and wire.lower() not in ("content-type", "accept"):
            # Content-Type and Accept are described by the request body and responses (OpenAPI ignores them here)
            schema = schemas.of(member)
            if member.type_name == "timestamp":
                schema = {"type": "string"}
            parameters.append({"name": wire, "in": "header", "required": name in shape.required_members,
                               "schema": schema})
    return parameters


def _body_members(shape: Shape | None) -> list[str]:
    if shape is None:
        return []
    payload = shape.serialization.get("payload")
    return [name for name, member in shape.members.items()
            if name != payload and member.serialization.get("location") is None]


def _request_body(schemas: _Schemas, shape: Shape | None) -> dict | None:
    if shape is None:
        return None
    payload = shape.serialization.get("payload")
    if payload:
        member = shape.members[payload]
        if member.type_name == "blob":  # InvokeModel: the model's own body, whatever its content type
            return {"required": payload in shape.required_members,
                    "content": {"application/json": {"schema": {}},
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
        return {"required": payload in shape.required_members,
                "content": {"application/json": {"schema": schemas.of(member)}}}
    members = _body_members(shape)
    if not members:
        return None
    return {"required": any(n in shape.required_members for n in members),
            "content": {"application/json": {"schema": schemas.body(shape, members)}}}


def _success(schemas: _Schemas, op: OperationModel) -> dict:
    shape = op.output_shape
    response: dict = {"description": f"{op.name} succeeded"}
    if shape is None:
        response["content"] = {"application/json": {"schema": {"type": "object"}}}
        return response
    headers = {}
    for name, member in shape.members.items():
        wire = member.serialization.get("name", name)
        if member.serialization.get("location") == "header" and wire.lower() != "content-type":
            headers[wire] = {"schema": {"type": "string"} if member.type_name == "timestamp" else schemas.of(member)}
    if headers:
        response["headers"] = headers
    payload = shape.serialization.get("payload")
    if payload:
        member = shape.members[payload]
        if member.type_name == "structure" and member.serialization.get("eventstream"):
            response["content"] = {EVENT_STREAM: {"schema": {"type": "string", "format": "binary"}}}
        elif member.type_name == "blob":  # the model's own answer, in the content type it names
            response["content"] = {"*/*": {"schema": {}}}
        else:
            response["content"] = {"application/json": {"schema": schemas.of(member)}}
    else:
        response["content"] = {"application/json": {"schema": schemas.body(shape, _body_members(shape))}}
    return response


def error_statuses(service: ServiceModel, op: OperationModel) -> dict[int, list[str]]:
    """The modelled errors an operation may answer, by HTTP status."""
    names = [shape.name for shape in op.error_shapes]
    names += [name for name in COMMON_ERRORS if name not in names and name in service.shape_names]
    by_status: dict[int, list[str]] = {}
    for name in names:
        status = service.shape_for(name).metadata.get("error", {}).get("httpStatusCode", 400)
        by_status.setdefault(status, []).append(name)
    return by_status


def _errors(schemas: _Schemas, service: ServiceModel, op: OperationModel) -> dict:
    responses = {}
    for status, names in sorted(error_statuses(service, op).items()):
        choices = [schemas.of(service.shape_for(name)) for name in names]
        responses[str(status)] = {
            "description": " or ".join(names),
            "headers": {"x-amzn-ErrorType": {"required": True, "schema": {"type": "string", "enum": names}}},
            "content": {"application/json": {"schema": choices[0] if len(choices) == 1 else {"anyOf": choices}}},
        }
    return responses


def openapi_document(services: list[ServiceModel], served: set[str] | dict) -> dict:
    """The OpenAPI document of the operations in `served` (names of the model's operations)."""
    paths: dict = {}
    components: dict = {}
    for service in services:
        schemas, answers = _Schemas(service, components), _Schemas(service, components, constraints=False)
        for name in service.operation_names:
            if name not in served:
                continue
            op = service.operation_model(name)
            # a greedy label {name+} matches several path segments; OpenAPI names the parameter without the +
            path = op.http["requestUri"].split("?", 1)[0].replace("+}", "}")
            operation = {"operationId": name, "tags": [service.service_name],
                         "summary": f"{service.service_name} {name}",
                         "parameters": _parameters(schemas, op.input_shape),
                         "responses": {str(op.http.get("responseCode", 200)): _success(answers, op),
                                       **_errors(answers, service, op)}}
            body = _request_body(schemas, op.input_shape)
            if body is not None:
                operation["requestBody"] = body
            if not operation["parameters"]:
                del operation["parameters"]
            paths.setdefault(path, {})[op.http["method"].lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "bedrock-local", "version": "1.0",
                 "description": "The Amazon Bedrock (bedrock, bedrock-runtime) operations this server answers, "
                                "generated from the botocore service models. Requests are signed with SigV4 as on AWS."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items()))},
    }
