"""S3Location: a validated (bucket, key) pair and the s3:// URI syntax it parses from."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidS3Uri

SCHEME = "s3://"
MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_BUCKET_RULE = (
    "S3 bucket names are 3-63 characters of lowercase letters, digits, dots and hyphens, "
    "start and end with a letter or digit, have no '..' and are not an IP address"
)


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a legal S3 bucket name, or None when it is."""
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket \
            or _IPV4_RE.fullmatch(bucket):
        return f"bucket name {bucket!r} is not valid: {_BUCKET_RULE}"
    return None


def key_problem(key: str) -> str | None:
    """Why `key` could not be a safe object key or prefix, or None when it is fine.

    '' (bucket root) and a trailing '/' (a prefix) are allowed; everything that could
    walk out of a folder, or hide a second meaning, is not.
    """
    if not isinstance(key, str):
        return f"key must be a string, not {type(key).__name__}"
    if key == "":
        return None
    if key.startswith("/"):
        return "key must not start with '/' (no empty path segments)"
    if "\\" in key:
        return "key must not contain a backslash"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "key must not contain NUL or control characters"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} bytes"
    segments = key.split("/")
    if segments[-1] == "":  # trailing '/' marks a prefix
        segments.pop()
    for segment in segments:
        if segment == "":
            return "key has an empty path segment ('//')"
        if segment in (".", ".."):
            return f"key segment {segment!r} is not allowed"
    return None


@dataclass(frozen=True)
class S3Location:
    """An object (or, with key '' or a trailing '/', a prefix) in a bucket. Always valid."""

    bucket: str
    key: str = ""

    def __post_init__(self) -> None:
        problem = bucket_problem(self.bucket) or key_problem(self.key)
        if problem:
            raise InvalidS3Uri(f"invalid S3 location {SCHEME}{self.bucket}/{self.key}: {problem}")

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Parse 's3://bucket[/key]'; raise InvalidS3Uri naming the uri and what is wrong."""
        if not isinstance(uri, str) or not uri.startswith(SCHEME):
            raise InvalidS3Uri(f"invalid S3 URI {uri!r}: it must start with {SCHEME}")
        bucket, _, key = uri[len(SCHEME):].partition("/")
        problem = bucket_problem(bucket) or key_problem(key)
        if problem:
            raise InvalidS3Uri(f"invalid S3 URI {uri!r}: {problem}")
        return cls(bucket, key)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        """True for the bucket root and for keys ending in '/': 'everything under it'."""
        return self.key == "" or self.key.endswith("/")

    def join(self, *parts: str) -> S3Location:
        """A location below this one; 'a/'.join('b', 'c.jsonl') -> 'a/b/c.jsonl'.

        A part may hold '/' inside and a trailing '/' on the last part keeps the result a prefix;
        a part that is empty, starts with '/' or has '..'/'.' segments raises InvalidS3Uri.
        """
        segments = [self.key.rstrip("/")] if self.key else []
        for i, part in enumerate(parts):
            problem = key_problem(part) if isinstance(part, str) and part else "empty part"
            if problem:
                raise InvalidS3Uri(f"cannot join {part!r} to {self.uri}: {problem}")
            segments.append(part if i == len(parts) - 1 else part.rstrip("/"))
        key = "/".join(segments)
        problem = key_problem(key)
        if problem:
            raise InvalidS3Uri(f"cannot join {parts!r} to {self.uri}: {problem}")
        return S3Location(self.bucket, key)

    def __str__(self) -> str:
        return self.uri
