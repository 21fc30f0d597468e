"""storage: the object store behind s3:// URIs (any S3 endpoint, or the embedded folder store)."""

from .base import ObjectStore, open_object_store, sweep_leftovers
from .errors import InvalidS3Uri, NoSuchBucket, NoSuchKey, StorageError
from .folder import FolderStore
from .location import S3Location
from .s3 import S3Store

__all__ = [
    "FolderStore",
    "InvalidS3Uri",
    "NoSuchBucket",
    "NoSuchKey",
    "ObjectStore",
    "S3Location",
    "S3Store",
    "StorageError",
    "open_object_store",
    "sweep_leftovers",
]
