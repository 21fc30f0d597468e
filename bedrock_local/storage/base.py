"""ObjectStore: the interface both object stores implement, and open_object_store to pick one."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator, Protocol, runtime_checkable

from .location import S3Location


@runtime_checkable
class ObjectStore(Protocol):
    """Objects addressed by S3Location.

    Reads of a missing bucket raise NoSuchBucket, of a missing object NoSuchKey.
    A prefix location (key '' or ending in '/') means everything under it; list_objects and
    delete_prefix use S3 prefix semantics (plain string prefix on the key).
    """

    def get_bytes(self, loc: S3Location) -> bytes: ...

    def put_bytes(self, loc: S3Location, data: bytes) -> None: ...

    def upload_file(self, loc: S3Location, path: Path) -> None: ...

    def download_file(self, loc: S3Location, path: Path) -> None: ...

    def open_read(self, loc: S3Location) -> BinaryIO: ...

    def list_objects(self, prefix: S3Location) -> Iterator[tuple[S3Location, int]]: ...

    def exists(self, loc: S3Location) -> bool: ...

    def delete_prefix(self, prefix: S3Location) -> int: ...

    def ensure_bucket(self, bucket: str) -> None: ...

    def bucket_exists(self, bucket: str) -> bool: ...


def open_object_store(data_dir: Path, s3_endpoint_url: str | None = None, **s3_kwargs) -> ObjectStore:
    """The S3 endpoint when one is configured, else the folder store in <data_dir>/s3.

    s3_kwargs (region_name, aws_access_key_id, aws_secret_access_key) go to S3Store and are
    ignored for the folder store.
    """
    if s3_endpoint_url:
        from .s3 import S3Store

        return S3Store(s3_endpoint_url, **s3_kwargs)
    from .folder import FolderStore

    return FolderStore(Path(data_dir) / "s3")
