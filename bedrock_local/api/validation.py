r"""Request validation from the botocore model, with AWS's wording.

botocore's ParamValidator checks required members, types and minimums on the client side. The
server extends it with what the service enforces: maximum lengths and ranges, patterns (full
match) and enums, and reports every problem the way AWS does:
``1 validation error detected: Value 'x' at 'jobName' failed to satisfy constraint: ...``.

Patterns run on the `regex` engine, not `re`: some of the model's patterns nest quantifiers over
overlapping classes (jobName's ``[a-zA-Z0-9](-*[a-zA-Z0-9\+\-\.])*``), on which `re` backtracks
exponentially: one 60-character name held the event loop for minutes. `regex` answers those at once,
and a time limit bounds any other: a value whose check runs out of time does not satisfy the pattern.
"""

import functools
import logging

import regex

from botocore.validate import ParamValidator, ValidationErrors


PATTERN_SECONDS = 0.05  # the most one pattern check may take

log = logging.getLogger("bedrock_local.api")


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _matches(pattern: str, value: str) -> bool:
    try:
        return (_fullmatch_remembered if len(value) <= _REMEMBERED_LENGTH else _fullmatch)(pattern, value)
    except TimeoutError:
        log.warning("a value of %d characters ran the pattern %s out of time; refused", len(value), pattern)
        return False


def _fullmatch(pattern: str, value: str) -> bool:
    return _compiled(pattern).fullmatch(value, timeout=PATTERN_SECONDS) is not None


# values up to this long have their answers remembered (a client sends the same ARNs and names again
# and again: a polled job's ARN is checked once, not per request); a check that ran out of time raises,
# so it is not remembered
_REMEMBERED_LENGTH = 256
_fullmatch_remembered = functools.lru_cache(maxsize=4096)(_fullmatch)


def _shown(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


class AwsValidationErrors(ValidationErrors):
    """Collects problems and formats them as the AWS ValidationException message."""

    def _format_error(self, error):
        kind, name, extra = error
        where = self._get_name(name)
        if kind == "missing required field":
            child = f"{where}.{extra['required_name']}" if name else extra["required_name"]
            return f"Value null at '{child}' failed to satisfy constraint: Member must not be null"
        if kind == "unknown field":
            known = ", ".join(extra["valid_names"])
            return f"Unknown member '{extra['unknown_param']}' at '{where}'; known members: {known}"
        if kind == "invalid type":
            return (f"Value '{_shown(extra['param'])}' at '{where}' failed to satisfy constraint: "
                    f"Member must be of type {extra['expected']}")
        if kind == "constraint":
            return (f"Value '{_shown(extra['param'])}' at '{where}' failed to satisfy constraint: "
                    f"{extra['constraint']}")
        if kind in ("more than one input", "empty input"):
            members = ", ".join(extra["members"])
            return f"Value at '{where}' failed to satisfy constraint: Member must set exactly one of: {members}"
        return super()._format_error(error)

    def message(self) -> str:
        lines = [self._format_error(e) for e in self._errors]
        noun = "error" if len(lines) == 1 else "errors"
        return f"{len(lines)} validation {noun} detected: " + "; ".join(lines)


_TYPE_NAMES = {"string": "string", "integer": "integer", "long": "long", "boolean": "boolean",
               "double": "double", "float": "float", "structure": "object", "map": "object",
               "list": "list", "timestamp": "timestamp", "blob": "blob"}


class ServerParamValidator(ParamValidator):
    """ParamValidator plus maximums, patterns and enums, for values parsed off the wire."""

    def validate(self, params, shape):
        errors = AwsValidationErrors()
        self._validate(params, shape, errors, name="")
        return errors

    def _validate(self, params, shape, errors, name):
        kind = shape.type_name
        expected = self.SCALAR_TYPES.get(kind) or self.CONTAINER_TYPES.get(kind)
        is_document = kind == "structure" and shape.is_document_type
        if expected and not is_document:
            numeric_bool = isinstance(params, bool) and kind in ("integer", "long", "double", "float")
            if not isinstance(params, expected) or numeric_bool:
                errors.report(name, "invalid type", param=params, expected=_TYPE_NAMES.get(kind, kind))
                return
        if kind == "string" and "jsonvalue" not in shape.serialization:
            self._validate_string(params, shape, errors, name)  # type checked above: skip botocore's dispatch
            return
        super()._validate(params, shape, errors, name)

    @staticmethod
    def _check_size(name, size, value, shape, errors, unit):
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if unit == "value":
            if low is not None and size < low:
                errors.report(name, "constraint", param=value, constraint=f"Member must have value greater than or equal to {low}")
            elif high is not None and size > high:
                errors.report(name, "constraint", param=value, constraint=f"Member must have value less than or equal to {high}")
        else:
            if low is not None and size < low:
                errors.report(name, "constraint", param=value, constraint=f"Member must have length greater than or equal to {low}")
            elif high is not None and size > high:
                errors.report(name, "constraint", param=value, constraint=f"Member must have length less than or equal to {high}")

    def _validate_string(self, param, shape, errors, name):
        self._check_size(name, len(param), param, shape, errors, "length")
        enum = shape.metadata.get("enum")
        if enum and param not in enum:
            errors.report(name, "constraint", param=param,
                          constraint=f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern = shape.metadata.get("pattern")
        if pattern and not _matches(pattern, param):
            errors.report(name, "constraint", param=param,
                          constraint=f"Member must satisfy regular expression pattern: {pattern}")

    def _validate_list(self, param, shape, errors, name):
        self._check_size(name, len(param), f"list of {len(param)}", shape, errors, "length")
        for i, item in enumerate(param):
            self._validate(item, shape.member, errors, f"{name}.{i + 1}.member")

    def _validate_map(self, param, shape, errors, name):
        self._check_size(name, len(param), f"map of {len(param)}", shape, errors, "length")
        for key, value in param.items():
            self._validate(key, shape.key, errors, f"{name}.{key}(key)")
            self._validate(value, shape.value, errors, f"{name}.{key}")

    def _validate_integer(self, param, shape, errors, name):
        self._check_size(name, param, param, shape, errors, "value")

    _validate_long = _validate_integer

    def _validate_double(self, param, shape, errors, name):
        self._check_size(name, param, param, shape, errors, "value")

    _validate_float = _validate_double

    def _validate_boolean(self, param, shape, errors, name):
        pass

    def _validate_blob(self, param, shape, errors, name):
        # a blob arrives as bytes (base64-decoded from JSON, or the raw payload); anything else is the
        # wrong type (botocore's own check reports it without the `expected` its message needs)
        if not isinstance(param, (bytes, bytearray)):
            errors.report(name, "invalid type", param=param, expected="blob (base64-encoded)")
            return
        self._check_size(name, len(param), f"blob of {len(param)} bytes", shape, errors, "length")

    def _validate_timestamp(self, param, shape, errors, name):
        pass


VALIDATOR = ServerParamValidator()


def validation_message(params: dict, shape) -> str | None:
    """None when the parameters satisfy the shape, else AWS's ValidationException message."""
    errors = VALIDATOR.validate(params, shape)
    return errors.message() if errors.has_errors() else None
