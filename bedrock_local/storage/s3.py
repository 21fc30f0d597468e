"""S3Store: objects in any S3 endpoint (AWS S3, MinIO, Ceph, moto) through boto3, path-style."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Iterator

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import InvalidS3Uri, NoSuchBucket, NoSuchKey, StorageError
from .location import S3Location, bucket_problem

_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class _Body(io.RawIOBase):
    """botocore's StreamingBody as a raw stream, so io.BufferedReader gives readline and line iteration."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._body.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    """Objects in an S3-compatible endpoint. Keys ending in '/' (console 'folder' markers) and keys
    S3Location rejects are left out of listings."""

    def __init__(
        self,
        endpoint_url: str,
        region_name: str = "us-east-1",
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
    ):
        self.endpoint_url = endpoint_url
        self.region_name = region_name or "us-east-1"
        session = boto3.session.Session()  # own session: the default one is not thread-safe
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=self.region_name,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint_url!r})"

    # -- errors --------------------------------------------------------------------------

    def _error(self, error: Exception, what: str, loc: S3Location | None = None, bucket: str | None = None) -> StorageError:
        """Our exception for a botocore/boto3 failure while doing `what`."""
        bucket = bucket or (loc.bucket if loc else None)
        if isinstance(error, ClientError):
            code = _code(error)
            if code == "NoSuchBucket":
                return NoSuchBucket(bucket or "?")
            if code in _MISSING and loc is not None:
                # HEAD answers a bare 404 for a missing bucket and a missing key alike
                if code != "NoSuchKey" and bucket and not self.bucket_exists(bucket):
                    return NoSuchBucket(bucket)
                return NoSuchKey(loc.uri)
            return StorageError(f"S3 endpoint {self.endpoint_url} refused to {what}: {code}: {error}")
        if isinstance(error, S3UploadFailedError) and bucket and not self.bucket_exists(bucket):
            return NoSuchBucket(bucket)
        return StorageError(f"could not {what} at S3 endpoint {self.endpoint_url}: {error}")

    @staticmethod
    def _object(loc: S3Location) -> S3Location:
        if loc.is_prefix:
            raise InvalidS3Uri(f"{loc.uri} names a prefix (it ends with '/'), not an object")
        return loc

    # -- reads ---------------------------------------------------------------------------

    def open_read(self, loc: S3Location) -> BinaryIO:
        self._object(loc)
        try:
            body = self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"read {loc.uri}", loc) from e
        return io.BufferedReader(_Body(body), buffer_size=1024 * 1024)

    def get_bytes(self, loc: S3Location) -> bytes:
        with self.open_read(loc) as f:
            return f.read()

    def download_file(self, loc: S3Location, path: Path) -> None:
        self._object(loc)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(loc.bucket, loc.key, str(path))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"download {loc.uri}", loc) from e

    def exists(self, loc: S3Location) -> bool:
        try:
            if loc.is_prefix:
                return next(self.list_objects(loc), None) is not None
            self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except NoSuchBucket:
            return False
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise self._error(e, f"look up {loc.uri}", loc) from e
        except BotoCoreError as e:
            raise self._error(e, f"look up {loc.uri}", loc) from e

    def _pages(self, prefix: S3Location) -> Iterator[list[dict]]:
        """The Contents of each list_objects_v2 page; the first page is fetched before returning,
        so a missing bucket raises at the call."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key)
        pages = iter(pages)
        try:
            first = next(pages, {})
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"list {prefix.uri}", bucket=prefix.bucket) from e

        def generate():
            yield first.get("Contents", [])
            try:
                for page in pages:
                    yield page.get("Contents", [])
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, f"list {prefix.uri}", bucket=prefix.bucket) from e

        return generate()

    def list_objects(self, prefix: S3Location) -> Iterator[tuple[S3Location, int]]:
        pages = self._pages(prefix)

        def generate():
            for contents in pages:
                for obj in contents:
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    try:
                        yield S3Location(prefix.bucket, key), int(obj["Size"])
                    except InvalidS3Uri:
                        continue

        return generate()

    def bucket_exists(self, bucket: str) -> bool:
        problem = bucket_problem(bucket)
        if problem:
            raise InvalidS3Uri(problem)
        try:
            self.client.head_bucket(Bucket=bucket)
            return True
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise self._error(e, f"look up bucket {bucket!r}", bucket=bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"look up bucket {bucket!r}", bucket=bucket) from e

    # -- writes --------------------------------------------------------------------------

    def put_bytes(self, loc: S3Location, data: bytes) -> None:
        self._object(loc)
        try:
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=bytes(data))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"write {loc.uri}", loc) from e

    def upload_file(self, loc: S3Location, path: Path) -> None:
        self._object(loc)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path} to {loc.uri}: no such file")
        try:
            self.client.upload_file(str(path), loc.bucket, loc.key)  # multipart above 8 MiB
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise self._error(e, f"upload {path} to {loc.uri}", bucket=loc.bucket) from e

    def delete_prefix(self, prefix: S3Location) -> int:
        """Delete every object whose key starts with prefix.key (folder markers included)."""
        deleted = 0
        batch: list[dict] = []

        def flush() -> int:
            try:
                answer = self.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as e:
                raise self._error(e, f"delete under {prefix.uri}", bucket=prefix.bucket) from e
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 endpoint {self.endpoint_url} could not delete {len(errors)} object(s) under {prefix.uri}, "
                    f"e.g. {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
                )
            return len(batch)

        for contents in self._pages(prefix):
            for obj in contents:
                batch.append({"Key": obj["Key"]})
                if len(batch) == _DELETE_BATCH:
                    deleted += flush()
                    batch = []
        if batch:
            deleted += flush()
        return deleted

    def sweep_temporary(self, prefix: S3Location | None = None) -> int:
        """Abort the incomplete multipart uploads under `prefix` (what a kill -9 during a big upload
        leaves: invisible parts the endpoint keeps and bills); answers how many. Only the owner of the
        prefix calls it (a job's new lease holder, for the job's own keys), so no live upload is cut.
        Without a prefix nothing is done: a bucket lifecycle rule (AbortIncompleteMultipartUpload)
        covers an endpoint as a whole (docs/deploy.md)."""
        if prefix is None:
            return 0
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=prefix.bucket,
                                                                                 Prefix=prefix.key)
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=prefix.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted += 1
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, f"abort the incomplete uploads under {prefix.uri}", bucket=prefix.bucket) from e
        return aborted

    def ensure_bucket(self, bucket: str) -> None:
        if self.bucket_exists(bucket):
            return
        extra = {}
        if self.region_name != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.region_name}
        try:
            self.client.create_bucket(Bucket=bucket, **extra)
        except ClientError as e:
            if _code(e) == "BucketAlreadyOwnedByYou":
                return
            raise self._error(e, f"create bucket {bucket!r}", bucket=bucket) from e
        except BotoCoreError as e:
            raise self._error(e, f"create bucket {bucket!r}", bucket=bucket) from e
