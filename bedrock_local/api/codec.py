"""The rest-json protocol, server side, driven by a botocore service model.

The mirror image of botocore's RestJSONSerializer and RestJSONParser: the route table comes from
each operation's ``http.method`` and ``http.requestUri``; a request is parsed into plain Python
values by walking the input shape (uri labels, query string, headers, JSON body or payload); a
result is serialized by walking the output shape, with the status code the model gives
(``responseCode``). Nothing here is written per operation.
"""

import base64
import datetime
import functools
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

import orjson
from botocore.model import OperationModel, ServiceModel, Shape
from botocore.utils import parse_timestamp

from bedrock_local.service.errors import BedrockError, ValidationException

_LABEL = re.compile(r"\{([^}]+)\}")
_ONE_ERROR = "1 validation error detected: "  # the prefix of AWS's ValidationException messages
# what a timestamp in the iso8601 format the models name looks like on the wire (RFC 3339 date-time)
_ISO8601 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE)


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
    labels: tuple[tuple[str, str], ...]  # (label, regex group) of each {label} in the path


@dataclass(frozen=True)
class InputPlan:
    """Where each member of an operation's input comes from, read once from the model:
    (member name, wire name, member shape) per location."""
    uri: tuple
    query: tuple
    header: tuple
    headers: tuple            # location "headers": a map of every header with the prefix
    payload: tuple | None     # (name, shape) of the member that is the whole body, if any
    body: tuple               # members of the JSON body object


@dataclass(frozen=True)
class OutputPlan:
    """The status code and the members of an operation's output with their location and writer."""
    status: int
    members: tuple            # (name, wire name, location, shape, writer)
    payload: str | None


_remembered_unquote = functools.lru_cache(maxsize=4096)(unquote)


def _unquote(text: str) -> str:
    """A label's decoded value, remembered for labels up to 1,024 characters (a client polling one job
    sends the same encoded ARN again and again; longer ones, never an ARN, would only fill the memory)."""
    return _remembered_unquote(text) if len(text) <= 1024 else unquote(text)


def _first_segment(path: str) -> str:
    return path[1:].split("/", 1)[0]


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
            labels = tuple((label.rstrip("+"), _group(label.rstrip("+"))) for label in _LABEL.findall(path))
            routes.append(Route(op.http["method"], regex, literal, op, labels))
        # literal segments win over labels: /custom-models/create-custom-model before /custom-models/{id}
        self.routes = sorted(routes, key=lambda r: -r.literal_length)
        # candidates by method and first path segment (a route whose first segment has a label is a
        # candidate for every segment), in the same order as self.routes
        self._any_segment: dict[str, list[Route]] = {}
        self._by_segment: dict[tuple[str, str], list[Route]] = {}
        for route in self.routes:
            segment = _first_segment(route.operation.http["requestUri"].split("?")[0])
            if "{" in segment:
                self._any_segment.setdefault(route.method, []).append(route)
                for (method, _), candidates in self._by_segment.items():
                    if method == route.method:
                        candidates.append(route)
            else:
                self._by_segment.setdefault((route.method, segment), list(self._any_segment.get(route.method, [])))
                self._by_segment[route.method, segment].append(route)
        self._inputs: dict[str, InputPlan] = {}
        self._outputs: dict[str, OutputPlan] = {}
        self._writers: dict[tuple, object] = {}

    # ---- routing -------------------------------------------------------------------------
    def _candidates(self, method: str, segment: str) -> list[Route]:
        found = self._by_segment.get((method, segment))
        return found if found is not None else self._any_segment.get(method, [])

    def match(self, method: str, raw_path: str) -> tuple[OperationModel, dict[str, str]]:
        segment = _first_segment(raw_path)
        for route in self._candidates(method, segment):
            found = route.regex.fullmatch(raw_path)
            if found:
                return route.operation, {label: _unquote(found.group(group)) for label, group in route.labels}
        allowed = any(route.regex.fullmatch(raw_path) for other in {r.method for r in self.routes} - {method}
                      for route in self._candidates(other, segment))
        raise UnknownOperation(f"{method} {raw_path} is not an operation of {self.service_model.service_name}"
                               + (" (wrong method)" if allowed else ""))

    # ---- requests ------------------------------------------------------------------------
    def input_plan(self, op: OperationModel) -> InputPlan:
        plan = self._inputs.get(op.name)
        if plan is None:
            shape = op.input_shape
            where: dict[str, list] = {"uri": [], "querystring": [], "header": [], "headers": [], None: []}
            payload_name = shape.serialization.get("payload") if shape is not None else None
            for name, member in (shape.members.items() if shape is not None else ()):
                if name == payload_name:
                    continue
                location = member.serialization.get("location")
                where[location if location in where else None].append((name, member.serialization.get("name", name), member))
            plan = self._inputs[op.name] = InputPlan(
                tuple(where["uri"]), tuple(where["querystring"]), tuple(where["header"]), tuple(where["headers"]),
                (payload_name, shape.members[payload_name]) if payload_name else None, tuple(where[None]))
        return plan

    def parse_request(self, op: OperationModel, labels: dict[str, str], query_string: str,
                      headers: dict[str, str], body: bytes) -> dict:
        if op.input_shape is None:
            return {}
        plan = self.input_plan(op)
        params: dict = {}
        for name, wire, member in plan.uri:
            if wire in labels:
                params[name] = self._from_text(labels[wire], member, name)
        if plan.query and query_string:
            query = parse_qs(query_string, keep_blank_values=True)
            for name, wire, member in plan.query:
                self._parse_query_member(params, name, member, wire, query)
        for name, wire, member in plan.header:
            value = headers.get(wire.lower())
            if value is not None:
                params[name] = self._from_text(value, member, name, header=True)
        for name, wire, member in plan.headers:
            prefix = wire.lower()
            found = {k[len(prefix):]: v for k, v in headers.items() if k.startswith(prefix)}
            if found:
                params[name] = found
        if plan.payload:
            payload_name, member = plan.payload
            if member.type_name in ("blob", "string"):
                if body:
                    params[payload_name] = body if member.type_name == "blob" else body.decode("utf-8")
            elif body:
                params[payload_name] = self._parse_json_value(self._load_json(body), member, payload_name)
        elif plan.body and body.strip():
            document = self._load_json(body)
            if not isinstance(document, dict):
                raise SerializationError("The request body must be a JSON object")
            for name, wire, member in plan.body:
                if wire in document and document[wire] is not None:
                    params[name] = self._parse_json_value(document[wire], member, name)
        return params

    @staticmethod
    def _load_json(body: bytes):
        try:
            return json.loads(body.decode("utf-8"))  # strict: json.loads(bytes) would let encoded surrogates in
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
        if kind == "string" and not shape.serialization.get("jsonvalue"):
            return text
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
                return _timestamp(text, shape.serialization.get("timestampFormat", "rfc822" if header else "iso8601"))
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
                return _timestamp(value, shape.serialization.get("timestampFormat", "unixTimestamp"))
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

    # ---- responses -------------------------------------------------------------------------
    def output_plan(self, op: OperationModel) -> OutputPlan:
        plan = self._outputs.get(op.name)
        if plan is None:
            shape = op.output_shape
            members = tuple((name, member.serialization.get("name", name), member.serialization.get("location"),
                             member, self._writer(member)) for name, member in shape.members.items()) if shape else ()
            plan = self._outputs[op.name] = OutputPlan(
                op.http.get("responseCode", 200), members, shape.serialization.get("payload") if shape else None)
        return plan

    def serialize_response(self, op: OperationModel, result: dict) -> tuple[int, dict[str, str], bytes]:
        plan = self.output_plan(op)
        status = plan.status
        headers = {"Content-Type": "application/json"}
        if op.output_shape is None:
            return status, headers, b"{}"
        body: dict = {}
        raw_payload = None
        for name, wire, location, member, writer in plan.members:
            value = result.get(name)
            if value is None:
                continue
            if location is None and name != plan.payload:
                body[wire] = value if writer is None else writer(value)
            elif location == "header":
                headers[wire] = self._to_text(value, member)
            elif location == "headers":
                for key, item in value.items():
                    headers[wire + key] = str(item)
            elif location == "statusCode":
                status = int(value)
            elif name == plan.payload:
                if member.type_name in ("blob", "string"):
                    raw_payload = value if isinstance(value, bytes) else str(value).encode()
                else:
                    raw_payload = dumps(value if writer is None else writer(value))
            else:
                body[wire] = value if writer is None else writer(value)
        if raw_payload is not None:
            return status, headers, raw_payload
        return status, headers, dumps(body)

    def _to_json(self, value, shape: Shape):
        writer = self._writer(shape)
        return value if writer is None else writer(value)

    def _writer(self, shape: Shape):
        """The function that turns a value of `shape` into its JSON form, made once per shape (by name,
        type and serialization traits: botocore makes a new Shape object per member reference); None
        where a value is its own JSON form (strings, numbers, booleans, documents)."""
        key = (shape.name, shape.type_name, repr(sorted(shape.serialization.items())))
        if key in self._writers:
            return self._writers[key]
        kind = shape.type_name
        if kind not in ("structure", "list", "map") or (kind == "structure" and shape.is_document_type):
            writer = self._writers[key] = self._scalar_writer(shape)
            return writer
        late = []  # a shape may contain itself: while it is being made, references to it go through here
        self._writers[key] = lambda value: late[0](value)
        if kind == "structure":
            fields = tuple((name, member.serialization.get("name", name), self._writer(member))
                           for name, member in shape.members.items())

            def writer(value):
                out, get = {}, value.get
                for name, wire, write in fields:
                    item = get(name)
                    if item is not None:
                        out[wire] = item if write is None else write(item)
                return out
        elif kind == "list":
            write = self._writer(shape.member)

            def writer(value):
                return list(value) if write is None else [write(item) for item in value]
        else:
            write = self._writer(shape.value)

            def writer(value):
                return dict(value) if write is None else {k: write(item) for k, item in value.items()}
        late.append(writer)
        self._writers[key] = writer
        return writer

    @staticmethod
    def _scalar_writer(shape: Shape):
        if shape.type_name == "timestamp":
            fmt = shape.serialization.get("timestampFormat", "iso8601")
            return _iso8601 if fmt == "iso8601" else lambda value: format_timestamp(value, fmt)
        if shape.type_name == "blob":
            return lambda value: base64.b64encode(value).decode()
        return None

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


def _timestamp(value, fmt: str):
    """A timestamp in the format the model names for it: an iso8601 one must be an RFC 3339 date-time
    (botocore's parse_timestamp alone would also take epoch numbers and loose date forms)."""
    if fmt == "iso8601" and not (isinstance(value, str) and _ISO8601.fullmatch(value)):
        raise ValueError(f"not an ISO 8601 date-time: {value!r}")
    return parse_timestamp(value)


def dumps(value) -> bytes:
    """Compact JSON (orjson: several times faster than json.dumps on a page of summaries). orjson
    stops at 255 levels of nesting, and a document member may be nested as deep as the parser took
    it (near the recursion limit): such a value goes through the standard library's encoder."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" not in str(exc):
            raise
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def format_timestamp(value: datetime.datetime | str, fmt: str):
    if fmt not in ("rfc822", "unixTimestamp"):
        return _iso8601(value)
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    elif value.utcoffset():
        value = value.astimezone(datetime.timezone.utc)
    if fmt == "unixTimestamp":
        return value.timestamp()
    return value.strftime("%a, %d %b %Y %H:%M:%S GMT")  # rfc822


def _iso8601(value: datetime.datetime | str) -> str:
    """ISO 8601 in milliseconds, UTC: 2026-11-23T16:02:39.628Z (a time without a zone is UTC)."""
    if type(value) is str:
        # what the store holds, datetime.isoformat() of a UTC time, is cut to size rather than parsed
        if value[-6:] == "+00:00" and value[10:11] == "T":
            if len(value) == 32 and value[19] == ".":
                return value[:23] + "Z"
            if len(value) == 25:
                return value[:19] + ".000Z"
        value = datetime.datetime.fromisoformat(value)
    if value.utcoffset():
        value = value.astimezone(datetime.timezone.utc)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"
