"""ObjectStore: the interface both object stores implement, open_object_store to pick one, and
sweep_leftovers, which a process runs at its start."""

from __future__ import annotations

import logging
import threading
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

    def sweep_temporary(self, prefix: S3Location | None = None) -> int:
        """Remove what writes cut short by a kill left under `prefix` (the whole store when None):
        the folder store's temp files whose writer is gone, an S3 endpoint's incomplete multipart
        uploads (under a prefix only). Answers how many."""
        ...

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


def sweep_leftovers(objects: ObjectStore, *folders: Path, background: bool = True) -> threading.Thread | None:
    """At a process's start: remove the temp files that writes cut short by a kill -9 left in the
    object store and in local `folders` (the model and work cache), those whose writer is gone and no
    other (storage.folder.is_abandoned: the writer's host and pid are in the name). In a thread of its
    own by default, so a big store does not hold up the start."""
    from .folder import sweep_temporary

    def sweep() -> None:
        try:
            objects.sweep_temporary()
            for folder in folders:
                if Path(folder).is_dir():
                    sweep_temporary(Path(folder))
        except Exception as exc:  # noqa: BLE001 - a sweep that fails leaves files, never stops a start
            logging.getLogger("bedrock_local.storage").warning("the sweep of leftover temp files stopped: %s", exc)

    if not background:
        sweep()
        return None
    thread = threading.Thread(target=sweep, name="sweep-leftovers", daemon=True)
    thread.start()
    return thread
