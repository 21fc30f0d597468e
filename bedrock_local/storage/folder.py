"""FolderStore: the embedded object store, s3://bucket/key <-> <root>/bucket/key on local disk.

Writes are atomic (temp file in the same folder, then os.replace). No path may leave its
bucket folder: keys are validated by S3Location, and every path is resolved (following
symbolic links) and compared with the bucket folder before it is read or written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import InvalidS3Uri, NoSuchBucket, NoSuchKey, StorageError
from .location import S3Location, bucket_problem

TMP_PREFIX = ".bedrock-local-tmp-"  # temp files of unfinished writes; never listed
_COPY_CHUNK = 1024 * 1024


def write_atomically(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `fill` writes, so readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _copy_from(path: Path) -> Callable[[BinaryIO], None]:
    def fill(dest: BinaryIO) -> None:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, dest, _COPY_CHUNK)

    return fill


def _resolves_inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


class FolderStore:
    """Buckets are folders under `root` (= <data-dir>/s3), objects are files."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> Path:
        problem = bucket_problem(bucket)
        if problem:
            raise InvalidS3Uri(problem)
        return self.root / bucket

    def _existing_bucket_dir(self, bucket: str) -> Path:
        folder = self._bucket_dir(bucket)
        if not folder.is_dir():
            raise NoSuchBucket(bucket)
        if folder.resolve() != folder:
            raise StorageError(
                f"bucket folder {folder} is a symbolic link; the folder store only uses real folders under {self.root}"
            )
        return folder

    def _object_path(self, loc: S3Location) -> Path:
        if loc.is_prefix:
            raise InvalidS3Uri(f"{loc.uri} names a prefix (it ends with '/'), not an object")
        if loc.key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            raise InvalidS3Uri(f"{loc.uri}: names starting with {TMP_PREFIX!r} are reserved by the folder store")
        bucket_dir = self._existing_bucket_dir(loc.bucket)
        path = bucket_dir.joinpath(*loc.key.split("/"))
        if not _resolves_inside(path, bucket_dir):
            raise StorageError(
                f"{loc.uri} leads outside its bucket folder through a symbolic link; the folder store will not follow it"
            )
        return path

    def _writable_path(self, loc: S3Location) -> Path:
        path = self._object_path(loc)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StorageError(
                f"cannot store {loc.uri}: part of its key is already an object, and the folder store "
                "cannot hold both 'a' and 'a/b'"
            ) from None
        if path.is_dir():
            raise StorageError(
                f"cannot store {loc.uri}: objects exist under {loc.uri}/, and the folder store "
                "cannot hold both 'a' and 'a/b'"
            )
        return path

    # -- reads ---------------------------------------------------------------------------

    def open_read(self, loc: S3Location) -> BinaryIO:
        path = self._object_path(loc)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NoSuchKey(loc.uri) from None

    def get_bytes(self, loc: S3Location) -> bytes:
        with self.open_read(loc) as f:
            return f.read()

    def download_file(self, loc: S3Location, path: Path) -> None:
        path = Path(path)
        with self.open_read(loc) as src:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda dest: shutil.copyfileobj(src, dest, _COPY_CHUNK))

    def exists(self, loc: S3Location) -> bool:
        try:
            if loc.is_prefix:
                return next(self.list_objects(loc), None) is not None
            return self._object_path(loc).is_file()
        except NoSuchBucket:
            return False

    def list_objects(self, prefix: S3Location) -> Iterator[tuple[S3Location, int]]:
        bucket_dir = self._existing_bucket_dir(prefix.bucket)
        parent_key, _, stem = prefix.key.rpartition("/")
        parent = bucket_dir.joinpath(*parent_key.split("/")) if parent_key else bucket_dir
        found: list[Path] = []
        if _resolves_inside(parent, bucket_dir) and parent.is_dir():
            for entry in os.scandir(parent):
                if not entry.name.startswith(stem):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    for dirpath, _, filenames in os.walk(entry.path):  # does not follow links to folders
                        found.extend(Path(dirpath, name) for name in filenames)
                else:
                    found.append(Path(entry.path))
        listed = [item for path in found if (item := self._listed(prefix.bucket, bucket_dir, path))]
        listed.sort(key=lambda item: item[0].key)
        return iter(listed)

    def _listed(self, bucket: str, bucket_dir: Path, path: Path) -> tuple[S3Location, int] | None:
        if path.name.startswith(TMP_PREFIX) or not _resolves_inside(path, bucket_dir):
            return None
        try:
            loc = S3Location(bucket, path.relative_to(bucket_dir).as_posix())
            stat = path.stat()
        except (InvalidS3Uri, OSError):  # a file name no S3 key can have, or it just went away
            return None
        if not path.is_file():
            return None
        return loc, stat.st_size

    def bucket_exists(self, bucket: str) -> bool:
        folder = self._bucket_dir(bucket)
        return folder.is_dir() and folder.resolve() == folder

    # -- writes --------------------------------------------------------------------------

    def put_bytes(self, loc: S3Location, data: bytes) -> None:
        data = bytes(data)
        write_atomically(self._writable_path(loc), lambda f: f.write(data))

    def upload_file(self, loc: S3Location, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path} to {loc.uri}: no such file")
        write_atomically(self._writable_path(loc), _copy_from(path))

    def delete_prefix(self, prefix: S3Location) -> int:
        bucket_dir = self._existing_bucket_dir(prefix.bucket)
        deleted = 0
        folders: set[Path] = set()
        for loc, _ in list(self.list_objects(prefix)):
            path = bucket_dir.joinpath(*loc.key.split("/"))
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
            folders.update(p for p in path.parents if p.is_relative_to(bucket_dir) and p != bucket_dir)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
            try:
                folder.rmdir()  # only empty folders go
            except OSError:
                pass
        return deleted

    def ensure_bucket(self, bucket: str) -> None:
        folder = self._bucket_dir(bucket)
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError:
            raise StorageError(f"cannot create bucket {bucket!r}: {folder} exists and is not a folder") from None
        self._existing_bucket_dir(bucket)
