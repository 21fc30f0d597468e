"""Exceptions of the object store; str(e) always says what to fix."""


class StorageError(Exception):
    """Base class for every object-store failure."""


class InvalidS3Uri(StorageError):
    """A malformed s3:// URI, an illegal bucket name or a key that could escape the store."""


class NoSuchBucket(StorageError):
    """The bucket does not exist."""

    def __init__(self, bucket: str):
        self.bucket = bucket
        super().__init__(f"bucket {bucket!r} does not exist (create it first, or check the name)")


class NoSuchKey(StorageError):
    """No object at that key."""

    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(f"no object at {uri}")
