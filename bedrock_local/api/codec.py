"""The rest-json protocol, server side, driven by a botocore service model.

The mirror image of botocore's RestJSONSerializer and RestJSONParser: the route table comes from
each operation's ``http.method`` and ``http.requestUri``; a request is parsed into plain Python
values by walking the input shape (uri labels, query string, headers, JSON body or payload); a
result is serialized by walking the output shape, with the status code the model gives
(``responseCode``). Nothing here is written per operation.
"""

import base64
import datetime
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from botocore.model import OperationModel, ServiceModel, Shape
from botocore.utils import parse_timestamp

from bedrock_local.service.errors import BedrockError, ValidationException

_LABEL = re.compile(r"\{([^}]+)\}")
_ONE_ERROR = "1 validation error detected: "  # the prefix of AWS's ValidationException messages


class UnknownOperation(Exception):
    """No operation of the model answers this method and path."""


class SerializationError(ValidationException):
    """The request body or a member could not be read as the model's type."""


@dataclass(frozen=True)
class Route:
    method: str
    regex: re.Pattern
    literal_length: int
    operation: OperationModel


def _route_regex(uri_path: str) -> tuple[re.Pattern, int]:
    parts, literal, last = [], 0, 0
    for match in _LABEL.finditer(uri_path):
        literal_text = uri_path[last:match.start()]
        parts.append(re.escape(literal_text))
        literal += len(literal_text)
        label = match.group(1)
        greedy = label.endswith("+")
        name = label.rstrip("+")
        parts.append(f"(?P<{_group(name)}>{'.+' if greedy else '[^/]+'})")
        last = match.end()
    parts.append(re.escape(uri_path[last:]))
    literal += len(uri_path[last:])
    return re.compile("".join(parts) + "/?"), literal


def _group(label: str) -> str:
    return "g_" + re.sub(r"\W", "_", label)


class RestJsonCodec:
    """Parses requests for, and serializes responses of, one rest-json service model."""

    def __init__(self, service_model: ServiceModel):
        self.service_model = service_model
        routes = []
        for name in service_model.operation_names:
            op = service_model.operation_model(name)
            path = op.http["requestUri"].split("?")[0]
            regex, literal = _route_regex(path)
            routes.append(Route(op.http["method"], regex, literal, op))
        # literal segments win over labels: /custom-models/create-custom-model before /custom-models/{id}
        self.routes = sorted(routes, key=lambda r: -r.literal_length)

    # ---- routing -------------------------------------------------------------------------
    def match(self, method: str, raw_path: str) -> tuple[OperationModel, dict[str, str]]:
        allowed = False
        for route in self.routes:
            found = route.regex.fullmatch(raw_path)
            if not found:
                continue
            if route.method != method:
                allowed = True
                continue
            labels = {}
            for label in _LABEL.findall(route.operation.http["requestUri"].split("?")[0]):
                name = label.rstrip("+")
                labels[name] = unquote(found.group(_group(name)))
            return route.operation, labels
        raise UnknownOperation(f"{method} {raw_path} is not an operation of {self.service_model.service_name}"
                               + (" (wrong method)" if allowed else ""))

    # ---- requests ------------------------------------------------------------------------
    def parse_request(self, op: OperationModel, labels: dict[str, str], query_string: str,
                      headers: dict[str, str], body: bytes) -> dict:
        shape = op.input_shape
        if shape is None:
            return {}
        params: dict = {}
        query = parse_qs(query_string, keep_blank_values=True)
        payload_name = shape.serialization.get("payload")
        body_members = {}
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri":
                if wire in labels:
                    params[name] = self._from_text(labels[wire], member, name)
            elif location == "querystring":
                self._parse_query_member(params, name, member, wire, query)
            elif location == "header":
                value = headers.get(wire.lower())
                if value is not None:
                    params[name] = self._from_text(value, member, name, header=True)
            elif location == "headers":
                prefix = wire.lower()
                found = {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix)}
                if found:
                    params[name] = found
            elif name == payload_name:
                continue
            else:
                body_members[name] = member
        if payload_name:
            member = shape.members[payload_name]
            if member.type_name in ("blob", "string"):
                if body:
                    params[payload_name] = body if member.type_name == "blob" else body.decode("utf-8")
            elif body:
                params[payload_name] = self._parse_json_value(self._load_json(body), member, payload_name)
        elif body_members and body.strip():
            document = self._load_json(body)
            if not isinstance(document, dict):
                raise SerializationError("The request body must be a JSON object")
            for name, member in body_members.items():
                wire = member.serialization.get("name", name)
                if wire in document and document[wire] is not None:
                    params[name] = self._parse_json_value(document[wire], member, name)
        return params

    @staticmethod
    def _load_json(body: bytes):
        try:
            return json.loads(body)
        except UnicodeDecodeError:
            raise SerializationError("The request body is not valid UTF-8")
        except RecursionError:
            raise SerializationError("The request body is nested too deeply")
        except ValueError as exc:
            raise SerializationError(f"The request body is not valid JSON: {exc}")

    def _parse_query_member(self, params, name, member, wire, query):
        if member.type_name == "map":
            params[name] = {k: (v if member.value.type_name == "list" else v[-1]) for k, v in query.items()}
        elif wire in query:
            values = query[wire]
            if member.type_name == "list":
                params[name] = [self._from_text(v, member.member, name) for v in values]
            else:
                params[name] = self._from_text(values[-1], member, name)

    def _from_text(self, text: str, shape: Shape, where: str, header: bool = False):
        kind = shape.type_name
        try:
            if kind in ("integer", "long"):
                return int(text)
            if kind in ("double", "float"):
                return float(text)
            if kind == "boolean":
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                return text.lower() == "true"
            if kind == "timestamp":
                return parse_timestamp(text)
            if kind == "blob":
                return base64.b64decode(text)
            if kind == "list" and header:
                return [self._from_text(v.strip(), shape.member, where) for v in text.split(",")]
            if kind == "string" and shape.serialization.get("jsonvalue"):
                return json.loads(base64.b64decode(text))
        except (ValueError, TypeError, OverflowError):
            raise SerializationError(f"{_ONE_ERROR}Value '{text[:200]}' at '{where}' failed to satisfy constraint: "
                                     f"Member must be of type {kind}")
        return text

    def _parse_json_value(self, value, shape: Shape, where: str):
        kind = shape.type_name
        if kind == "structure" and not shape.is_document_type:  # unknown members are ignored, as AWS does
            if not isinstance(value, dict):
                return value  # the validator reports the type, with the member's name
            out = {}
            for name, member in shape.members.items():
                wire = member.serialization.get("name", name)
                if wire in value and value[wire] is not None:
                    out[name] = self._parse_json_value(value[wire], member, f"{where}.{name}")
            return out
        if kind == "list" and isinstance(value, list):
            return [self._parse_json_value(v, shape.member, f"{where}[{i}]") for i, v in enumerate(value)]
        if kind == "map" and isinstance(value, dict):
            return {k: self._parse_json_value(v, shape.value, f"{where}.{k}") for k, v in value.items()}
        if kind == "timestamp" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                return parse_timestamp(value)
            except (ValueError, TypeError, OverflowError):
                raise SerializationError(f"{_ONE_ERROR}Value '{str(value)[:200]}' at '{where}' failed to satisfy "
                                         f"constraint: Member must be of type timestamp")
        if kind == "blob" and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except ValueError:
                raise SerializationError(f"{_ONE_ERROR}Value at '{where}' failed to satisfy constraint: Member must be base64")
        if kind in ("double", "float") and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    # ---- responses -----------------------------------------------------------------------
    def serialize_response(self, op: OperationModel, result: dict) -> tuple[int, dict[str, str], bytes]:
        status = op.http.get("responseCode", 200)
        headers = {"Content-Type": "application/json"}
        shape = op.output_shape
        if shape is None:
            return status, headers, b"{}"
        body: dict = {}
        payload_name = shape.serialization.get("payload")
        raw_payload = None
        for name, member in shape.members.items():
            if name not in result or result[name] is None:
                continue
            value = result[name]
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "header":
                headers[wire] = self._to_text(value, member)
            elif location == "headers":
                for key, item in value.items():
                    headers[wire + key] = str(item)
            elif location == "statusCode":
                status = int(value)
            elif name == payload_name:
                if member.type_name in ("blob", "string"):
                    raw_payload = value if isinstance(value, bytes) else str(value).encode()
                else:
                    raw_payload = json.dumps(self._to_json(value, member)).encode()
            else:
                body[wire] = self._to_json(value, member)
        if raw_payload is not None:
            return status, headers, raw_payload
        return status, headers, json.dumps(body, separators=(",", ":")).encode()

    def _to_json(self, value, shape: Shape):
        kind = shape.type_name
        if kind == "structure" and not shape.is_document_type:
            out = {}
            for name, member in shape.members.items():
                if value.get(name) is not None:
                    out[member.serialization.get("name", name)] = self._to_json(value[name], member)
            return out
        if kind == "list":
            return [self._to_json(v, shape.member) for v in value]
        if kind == "map":
            return {k: self._to_json(v, shape.value) for k, v in value.items()}
        if kind == "timestamp":
            return format_timestamp(value, shape.serialization.get("timestampFormat", "iso8601"))
        if kind == "blob":
            return base64.b64encode(value).decode()
        return value

    @staticmethod
    def _to_text(value, shape: Shape) -> str:
        if shape.type_name == "timestamp":
            return format_timestamp(value, shape.serialization.get("timestampFormat", "rfc822"))
        if shape.type_name == "boolean":
            return "true" if value else "false"
        return str(value)

    # ---- errors --------------------------------------------------------------------------
    def serialize_error(self, error: BedrockError, request_id: str) -> tuple[int, dict[str, str], bytes]:
        status = 400
        body = {"message": error.message}
        if error.code in self.service_model.shape_names:
            shape = self.service_model.shape_for(error.code)
            status = shape.metadata.get("error", {}).get("httpStatusCode", status)
            for name, member in shape.members.items():
                if name in error.fields:
                    body[name] = self._to_json(error.fields[name], member)
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.code,
                   "x-amzn-RequestId": request_id}
        return status, headers, json.dumps(body).encode()


def format_timestamp(value: datetime.datetime | str, fmt: str):
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    elif value.utcoffset():
        value = value.astimezone(datetime.timezone.utc)
    if fmt == "unixTimestamp":
        return value.timestamp()
    if fmt == "rfc822":
        return value.strftime("%a, %d %b %Y %H:%M:%S GMT")
    # ISO 8601 in milliseconds, UTC: 2026-11-23T16:02:39.628Z
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
