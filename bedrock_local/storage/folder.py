"""FolderStore: the embedded object store, s3://bucket/key <-> <root>/bucket/key on local disk.

Writes are atomic (temp file in the same folder, then os.replace). No path may leave its
bucket folder: keys are validated by S3Location, and every path is resolved (following
symbolic links) and compared with the bucket folder before it is read or written.

A temp file's name says who writes it: `.bedrock-local-tmp-<host>.<pid>-<random>` (<host> a short
hash of the host name). A kill -9 leaves it behind; `sweep_temporary` removes those whose writer is
gone (see `is_abandoned`), never one a live process may still be writing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import InvalidS3Uri, NoSuchBucket, NoSuchKey, StorageError
from .location import S3Location, bucket_problem

TMP_PREFIX = ".bedrock-local-tmp-"  # temp files of unfinished writes; never listed
# A temp file this long unchanged is abandoned whoever wrote it: a live writer changes its file
# all the time (a copy from local disk, or a hard link made and renamed at once), so this only
# matters for writers on other hosts sharing the folder, whose processes cannot be looked up here.
ABANDONED_AFTER_SECONDS = 3600.0
_COPY_CHUNK = 1024 * 1024

log = logging.getLogger("bedrock_local.storage")


def _host_tag(hostname: str) -> str:
    return hashlib.sha256(hostname.encode()).hexdigest()[:8]


def temporary_prefix() -> str:
    """The start of this process's temp file names: TMP_PREFIX, then `<host>.<pid>-`."""
    return f"{TMP_PREFIX}{_host_tag(socket.gethostname())}.{os.getpid()}-"


def temporary_name() -> str:
    """A fresh temp file name of this process (for writers that make the file themselves)."""
    return f"{temporary_prefix()}{uuid.uuid4().hex}"


def _started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where it cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _process_alive(pid: int, since: float) -> bool:
    """Whether process `pid` runs and may have written a file last changed at `since`: a process with
    that pid that started after it (the pid was reused) is another one."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    started = _started_at(pid)
    return started is None or started <= since + 1.0  # 1 s: btime and the tick count are rounded


def is_abandoned(path: Path, now: float | None = None, max_age: float = ABANDONED_AFTER_SECONDS) -> bool:
    """Whether the temp file `path` is left over from a writer that is gone: its name says this host
    and a process that no longer runs (or whose pid now belongs to a newer process), or it has not
    changed for `max_age` seconds (a writer on another host, or a name without an owner)."""
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return False
    changed = max(stat.st_mtime, stat.st_ctime)  # ctime: a hard link made now keeps its source's mtime
    if (time.time() if now is None else now) - changed >= max_age:
        return True
    owner = path.name[len(TMP_PREFIX):].split("-", 1)[0]
    host, _, pid = owner.partition(".")
    if host != _host_tag(socket.gethostname()) or not pid.isdigit():
        return False
    return not _process_alive(int(pid), changed)


def sweep_temporary(folder: Path, max_age: float = ABANDONED_AFTER_SECONDS) -> int:
    """Remove the abandoned temp files (is_abandoned) anywhere under `folder`, and the abandoned temp
    folders (a model being built in the cache: engine/loading.py) with what they hold; answers how
    many. Folders are not followed through symbolic links; files that vanish meanwhile are skipped."""
    removed = 0
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [name for name in dirnames if name.startswith(TMP_PREFIX)]:
            dirnames.remove(name)  # a temp folder is removed whole or kept whole, never walked
            path = Path(dirpath, name)
            if not path.is_symlink() and is_abandoned(path, now, max_age):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        for name in filenames:
            if not name.startswith(TMP_PREFIX):
                continue
            path = Path(dirpath, name)
            if is_abandoned(path, now, max_age):
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove the abandoned temp file %s: %s", path, exc)
    if removed:
        log.info("removed %d temp file(s) of writes cut short (kill -9) under %s", removed, folder)
    return removed


def write_atomically(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `fill` writes, so readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(), dir=path.parent)
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

    def sweep_temporary(self, prefix: S3Location | None = None) -> int:
        """Remove abandoned temp files (is_abandoned): under `prefix` (a folder of keys), or the whole
        store; answers how many."""
        if prefix is None:
            return sweep_temporary(self.root)
        bucket_dir = self._existing_bucket_dir(prefix.bucket)
        folder = bucket_dir.joinpath(*prefix.key.rstrip("/").split("/")) if prefix.key.strip("/") else bucket_dir
        if not _resolves_inside(folder, bucket_dir) or not folder.is_dir():
            return 0
        return sweep_temporary(folder)

    def ensure_bucket(self, bucket: str) -> None:
        folder = self._bucket_dir(bucket)
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError:
            raise StorageError(f"cannot create bucket {bucket!r}: {folder} exists and is not a folder") from None
        self._existing_bucket_dir(bucket)
