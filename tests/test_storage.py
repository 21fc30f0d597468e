"""Tests of bedrock_local.storage: both object stores run the same tests, the S3 one against a real moto server."""

from __future__ import annotations

import os
import urllib.request

import pytest

from bedrock_local.storage import (
    FolderStore,
    InvalidS3Uri,
    NoSuchBucket,
    NoSuchKey,
    ObjectStore,
    S3Location,
    S3Store,
    StorageError,
    open_object_store,
)
from bedrock_local.storage.folder import TMP_PREFIX

BUCKET = "test-bucket"


def loc(key: str, bucket: str = BUCKET) -> S3Location:
    return S3Location(bucket, key)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def _s3_store(url: str) -> S3Store:
    return S3Store(url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "s3")
    url = request.getfixturevalue("moto_url")
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()
    return _s3_store(url)


@pytest.fixture
def bucket_store(store) -> ObjectStore:
    store.ensure_bucket(BUCKET)
    return store


# -- S3Location ----------------------------------------------------------------------------


def test_parse_valid_uris():
    x = S3Location.parse("s3://my-bucket/data/x.jsonl")
    assert (x.bucket, x.key, x.uri, str(x)) == ("my-bucket", "data/x.jsonl", "s3://my-bucket/data/x.jsonl", x.uri)
    assert not x.is_prefix
    assert S3Location.parse("s3://my-bucket") == S3Location("my-bucket", "")
    assert S3Location.parse("s3://my-bucket/") == S3Location("my-bucket", "")
    prefix = S3Location.parse("s3://my.bucket-1/out/")
    assert prefix.key == "out/" and prefix.is_prefix and prefix.uri == "s3://my.bucket-1/out/"
    assert S3Location.parse("s3://abc/a b/ü (1).txt").key == "a b/ü (1).txt"


@pytest.mark.parametrize(
    "uri, problem",
    [
        ("s3://b/../x", "bucket name"),
        ("s3://b/a/../../x", "bucket name"),
        ("s3://b//x", "bucket name"),
        ("s3://B/x", "bucket name"),
        ("s3:/b/x", "must start with s3://"),
        ("http://b/x", "must start with s3://"),
        ("s3://b/a\\b", "bucket name"),
        ("s3://bkt/../x", "'..'"),
        ("s3://bkt/a/../../x", "'..'"),
        ("s3://bkt/a/..", "'..'"),
        ("s3://bkt/./x", "'.'"),
        ("s3://bkt//x", "start with '/'"),
        ("s3://bkt/a//b", "empty path segment"),
        ("s3://bkt/a\\b", "backslash"),
        ("s3://bkt/..\\x", "backslash"),
        ("s3://bkt/a\x00b", "control"),
        ("s3://bkt/a\nb", "control"),
        ("s3://bkt/" + "k" * 1025, "longer than 1024"),
        ("s3:/bkt/x", "must start with s3://"),
        ("S3://bkt/x", "must start with s3://"),
        ("http://bkt/x", "must start with s3://"),
        ("/bkt/x", "must start with s3://"),
        ("s3://Bucket/x", "bucket name"),
        ("s3://ab/x", "bucket name"),
        ("s3://" + "a" * 64 + "/x", "bucket name"),
        ("s3://-bkt/x", "bucket name"),
        ("s3://bkt-/x", "bucket name"),
        ("s3://bk..t/x", "bucket name"),
        ("s3://bk_t/x", "bucket name"),
        ("s3://192.168.1.1/x", "bucket name"),
        ("s3:///x", "bucket name"),
    ],
)
def test_parse_rejects(uri, problem):
    with pytest.raises(InvalidS3Uri) as info:
        S3Location.parse(uri)
    message = str(info.value)
    assert repr(uri) in message and problem in message


def test_parse_rejects_non_string():
    with pytest.raises(InvalidS3Uri):
        S3Location.parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bucket, key", [("bkt", "../x"), ("bkt", "/x"), ("bkt", "a//b"), ("BKT", "x"), ("bkt", "a\\b")])
def test_constructor_validates(bucket, key):
    with pytest.raises(InvalidS3Uri):
        S3Location(bucket, key)


def test_join():
    out = S3Location("bkt", "out/")
    assert out.join("a", "b.jsonl") == S3Location("bkt", "out/a/b.jsonl")
    assert S3Location("bkt", "out").join("x") == S3Location("bkt", "out/x")
    assert S3Location("bkt").join("a/b", "c") == S3Location("bkt", "a/b/c")
    assert out.join("a/", "b") == S3Location("bkt", "out/a/b")
    assert out.join("sub/").key == "out/sub/"
    assert out.join("sub/").is_prefix


@pytest.mark.parametrize("part", ["..", "a/../..", "/etc/passwd", "a//b", "", ".", "a\\b", "x\x00"])
def test_join_rejects(part):
    with pytest.raises(InvalidS3Uri) as info:
        S3Location("bkt", "out/").join("ok", part)
    assert "s3://bkt/out/" in str(info.value)


# -- both stores ---------------------------------------------------------------------------


def test_round_trip_bytes(bucket_store):
    payload = bytes(range(256)) * 10
    bucket_store.put_bytes(loc("a/b/c.bin"), payload)
    assert bucket_store.get_bytes(loc("a/b/c.bin")) == payload
    bucket_store.put_bytes(loc("a/b/c.bin"), b"second")
    assert bucket_store.get_bytes(loc("a/b/c.bin")) == b"second"
    bucket_store.put_bytes(loc("empty"), b"")
    assert bucket_store.get_bytes(loc("empty")) == b""


def test_upload_and_download_file(bucket_store, tmp_path):
    src = tmp_path / "local" / "in.jsonl"
    src.parent.mkdir()
    src.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    bucket_store.upload_file(loc("in/in.jsonl"), src)
    assert bucket_store.get_bytes(loc("in/in.jsonl")) == src.read_bytes()
    dest = tmp_path / "downloads" / "deep" / "out.jsonl"
    bucket_store.download_file(loc("in/in.jsonl"), dest)
    assert dest.read_bytes() == src.read_bytes()


def test_upload_and_download_big_file(bucket_store, tmp_path):
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    src.write_bytes(block * 9 + b"tail")  # above boto3's 8 MiB multipart threshold
    bucket_store.upload_file(loc("big/big.bin"), src)
    assert list(bucket_store.list_objects(loc("big/"))) == [(loc("big/big.bin"), 9 * (1 << 20) + 4)]
    dest = tmp_path / "big-copy.bin"
    bucket_store.download_file(loc("big/big.bin"), dest)
    assert dest.read_bytes() == src.read_bytes()


def test_upload_missing_local_file(bucket_store, tmp_path):
    with pytest.raises(FileNotFoundError):
        bucket_store.upload_file(loc("x"), tmp_path / "nope")
    assert not bucket_store.exists(loc("x"))


def test_open_read_streams_lines(bucket_store):
    lines = [f'{{"recordId": "{i:05d}", "text": "{"x" * i}"}}\n'.encode() for i in range(500)]
    bucket_store.put_bytes(loc("data/records.jsonl"), b"".join(lines))
    with bucket_store.open_read(loc("data/records.jsonl")) as f:
        assert f.readline() == lines[0]
        assert f.read(3) == lines[1][:3]
        assert f.readline() == lines[1][3:]
        rest = list(f)
    assert rest == lines[2:]


def test_list_objects_recursive_sorted_with_sizes(bucket_store):
    objects = {
        "data/x.jsonl": b"12345",
        "data/sub/deep/y.jsonl": b"1",
        "data/a.jsonl": b"123",
        "data/x.jsonl.out": b"12",
        "data2/z": b"",
        "top": b"1234567",
    }
    for key, data in objects.items():
        bucket_store.put_bytes(loc(key), data)

    def listed(key):
        return [(item.key, size) for item, size in bucket_store.list_objects(loc(key))]

    assert listed("data/") == [
        ("data/a.jsonl", 3),
        ("data/sub/deep/y.jsonl", 1),
        ("data/x.jsonl", 5),
        ("data/x.jsonl.out", 2),
    ]
    assert listed("") == sorted((k, len(v)) for k, v in objects.items())
    assert listed("data/x.jsonl") == [("data/x.jsonl", 5), ("data/x.jsonl.out", 2)]  # S3 prefix semantics
    assert listed("data/x.jsonl.out") == [("data/x.jsonl.out", 2)]
    assert listed("data/sub") == [("data/sub/deep/y.jsonl", 1)]
    assert [k for k, _ in listed("data")] == ["data/a.jsonl", "data/sub/deep/y.jsonl", "data/x.jsonl",
                                              "data/x.jsonl.out", "data2/z"]
    assert listed("da") == listed("data")
    assert listed("nothing/") == []
    assert listed("data/x.jsonl.outer") == []
    assert all(item.bucket == BUCKET for item, _ in bucket_store.list_objects(loc("")))


def test_list_objects_many_pages(bucket_store):
    keys = [f"many/{i:04d}" for i in range(1005)]  # more than one list_objects_v2 page
    for key in keys:
        bucket_store.put_bytes(loc(key), b"x")
    assert [item.key for item, _ in bucket_store.list_objects(loc("many/"))] == keys
    assert bucket_store.delete_prefix(loc("many/")) == 1005
    assert list(bucket_store.list_objects(loc("many/"))) == []


def test_exists(bucket_store):
    bucket_store.put_bytes(loc("data/x.jsonl"), b"x")
    assert bucket_store.exists(loc("data/x.jsonl"))
    assert not bucket_store.exists(loc("data/y.jsonl"))
    assert not bucket_store.exists(loc("data"))  # a folder is not an object
    assert bucket_store.exists(loc("data/"))  # a prefix exists when something is under it
    assert not bucket_store.exists(loc("other/"))
    assert not bucket_store.exists(loc("data/x.jsonl", bucket="missing-bucket"))
    assert not bucket_store.exists(loc("", bucket="missing-bucket"))


def test_delete_prefix(bucket_store):
    for key in ["out/a", "out/b/c", "out/b/d", "outer", "keep/a"]:
        bucket_store.put_bytes(loc(key), b"data")
    assert bucket_store.delete_prefix(loc("out/")) == 3
    assert [item.key for item, _ in bucket_store.list_objects(loc(""))] == ["keep/a", "outer"]
    assert not bucket_store.exists(loc("out/b/c"))
    assert bucket_store.delete_prefix(loc("out/")) == 0
    assert bucket_store.delete_prefix(loc("keep/a")) == 1
    assert [item.key for item, _ in bucket_store.list_objects(loc(""))] == ["outer"]
    # the folder left empty can be used again, and as an object name
    bucket_store.put_bytes(loc("out"), b"now a file")
    assert bucket_store.get_bytes(loc("out")) == b"now a file"


def test_missing_bucket(store, tmp_path):
    missing = S3Location("missing-bucket", "data/x.jsonl")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    calls = [
        lambda: store.get_bytes(missing),
        lambda: store.open_read(missing),
        lambda: store.put_bytes(missing, b"x"),
        lambda: store.upload_file(missing, src),
        lambda: store.download_file(missing, tmp_path / "d"),
        lambda: store.list_objects(S3Location("missing-bucket", "")),
        lambda: store.delete_prefix(S3Location("missing-bucket", "data/")),
    ]
    for call in calls:
        with pytest.raises(NoSuchBucket) as info:
            call()
        assert "missing-bucket" in str(info.value)
    assert not (tmp_path / "d").exists()
    assert not store.bucket_exists("missing-bucket")


def test_missing_key(bucket_store, tmp_path):
    bucket_store.put_bytes(loc("data/present"), b"x")
    missing = loc("data/absent.jsonl")
    for call, uri in [
        (lambda: bucket_store.get_bytes(missing), missing.uri),
        (lambda: bucket_store.open_read(missing), missing.uri),
        (lambda: bucket_store.download_file(missing, tmp_path / "d"), missing.uri),
        (lambda: bucket_store.get_bytes(loc("data")), "s3://test-bucket/data"),  # only a "folder"
    ]:
        with pytest.raises(NoSuchKey) as info:
            call()
        assert str(info.value) == f"no object at {uri}"
    assert isinstance(info.value, StorageError)
    assert not (tmp_path / "d").exists()


def test_prefix_is_not_an_object(bucket_store):
    with pytest.raises(InvalidS3Uri, match="prefix"):
        bucket_store.put_bytes(loc("data/"), b"x")
    with pytest.raises(InvalidS3Uri, match="prefix"):
        bucket_store.get_bytes(loc(""))


def test_ensure_bucket(store):
    assert not store.bucket_exists("model-bucket")
    store.ensure_bucket("model-bucket")
    assert store.bucket_exists("model-bucket")
    store.put_bytes(S3Location("model-bucket", "m/config.json"), b"{}")
    store.ensure_bucket("model-bucket")  # idempotent, keeps the contents
    assert store.get_bytes(S3Location("model-bucket", "m/config.json")) == b"{}"
    with pytest.raises(InvalidS3Uri, match="bucket name"):
        store.ensure_bucket("Bad_Bucket")
    with pytest.raises(InvalidS3Uri, match="bucket name"):
        store.bucket_exists("..")


def test_stores_satisfy_protocol(store):
    assert isinstance(store, ObjectStore)


def test_open_object_store(tmp_path, moto_url):
    folder = open_object_store(tmp_path / "data")
    assert isinstance(folder, FolderStore) and folder.root == (tmp_path / "data" / "s3").resolve()
    folder.ensure_bucket("bkt")
    folder.put_bytes(S3Location("bkt", "k"), b"v")
    assert (tmp_path / "data" / "s3" / "bkt" / "k").read_bytes() == b"v"

    s3 = open_object_store(tmp_path / "data", moto_url, aws_access_key_id="testing", aws_secret_access_key="testing")
    assert isinstance(s3, S3Store)
    s3.ensure_bucket("via-endpoint")
    s3.put_bytes(S3Location("via-endpoint", "k"), b"remote")
    assert _s3_store(moto_url).get_bytes(S3Location("via-endpoint", "k")) == b"remote"
    assert not (tmp_path / "data" / "s3" / "via-endpoint").exists()


def test_s3_store_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3Store("http://127.0.0.1:9", aws_access_key_id="x", aws_secret_access_key="y")
    with pytest.raises(StorageError, match="127.0.0.1:9"):
        store.bucket_exists("some-bucket")


# -- folder store only ---------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> FolderStore:
    store = FolderStore(tmp_path / "s3")
    store.ensure_bucket(BUCKET)
    return store


def test_folder_layout(folder, tmp_path):
    folder.put_bytes(loc("data/x.jsonl"), b"on disk")
    assert (tmp_path / "s3" / BUCKET / "data" / "x.jsonl").read_bytes() == b"on disk"
    (tmp_path / "s3" / BUCKET / "made-by-hand.txt").write_bytes(b"hello")
    assert folder.get_bytes(loc("made-by-hand.txt")) == b"hello"


def test_folder_writes_leave_no_temp_files(folder, tmp_path):
    folder.put_bytes(loc("data/x"), b"1")

    class Boom(Exception):
        pass

    def fill(_):
        raise Boom

    from bedrock_local.storage.folder import write_atomically

    with pytest.raises(Boom):
        write_atomically(tmp_path / "s3" / BUCKET / "data" / "x", fill)
    assert sorted(p.name for p in (tmp_path / "s3" / BUCKET / "data").iterdir()) == ["x"]
    assert folder.get_bytes(loc("data/x")) == b"1"  # the old content survived the failed write


def test_folder_hides_temp_files(folder, tmp_path):
    folder.put_bytes(loc("data/x"), b"1")
    (tmp_path / "s3" / BUCKET / "data" / (TMP_PREFIX + "abc")).write_bytes(b"half written")
    assert [item.key for item, _ in folder.list_objects(loc("data/"))] == ["data/x"]
    with pytest.raises(InvalidS3Uri, match="reserved"):
        folder.put_bytes(loc("data/" + TMP_PREFIX + "x"), b"x")


def test_folder_object_and_prefix_conflict(folder):
    folder.put_bytes(loc("a"), b"file")
    with pytest.raises(StorageError, match="s3://test-bucket/a/b"):
        folder.put_bytes(loc("a/b"), b"x")
    folder.put_bytes(loc("c/d"), b"x")
    with pytest.raises(StorageError, match="s3://test-bucket/c"):
        folder.put_bytes(loc("c"), b"x")
    assert folder.get_bytes(loc("a")) == b"file"


def test_folder_symlinks_out_of_the_store_are_not_followed(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    bucket_dir = tmp_path / "s3" / BUCKET
    (bucket_dir / "linkdir").symlink_to(outside, target_is_directory=True)
    (bucket_dir / "linkfile").symlink_to(outside / "secret")

    for call in [
        lambda: folder.get_bytes(loc("linkdir/secret")),
        lambda: folder.open_read(loc("linkfile")),
        lambda: folder.download_file(loc("linkfile"), tmp_path / "copy"),
        lambda: folder.put_bytes(loc("linkdir/new"), b"x"),
        lambda: folder.put_bytes(loc("linkdir/deeper/new"), b"x"),
        lambda: folder.put_bytes(loc("linkfile"), b"overwritten"),
        lambda: folder.exists(loc("linkfile")),
    ]:
        with pytest.raises(StorageError, match="symbolic link"):
            call()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"
    assert not (tmp_path / "copy").exists()
    assert list(folder.list_objects(loc(""))) == []
    assert list(folder.list_objects(loc("linkdir/"))) == []
    assert folder.delete_prefix(loc("")) == 0
    assert (outside / "secret").exists()


def test_folder_symlink_inside_the_bucket_is_allowed(folder, tmp_path):
    folder.put_bytes(loc("real/x"), b"inside")
    (tmp_path / "s3" / BUCKET / "alias").symlink_to(tmp_path / "s3" / BUCKET / "real" / "x")
    assert folder.get_bytes(loc("alias")) == b"inside"
    assert [(item.key, size) for item, size in folder.list_objects(loc(""))] == [("alias", 6), ("real/x", 6)]


def test_folder_bucket_symlinked_out_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "k").write_bytes(b"x")
    store = FolderStore(tmp_path / "s3")
    (tmp_path / "s3" / "linked-bucket").symlink_to(outside, target_is_directory=True)
    assert not store.bucket_exists("linked-bucket")
    with pytest.raises(StorageError, match="symbolic link"):
        store.get_bytes(S3Location("linked-bucket", "k"))
    with pytest.raises(StorageError, match="symbolic link"):
        store.ensure_bucket("linked-bucket")


def test_folder_symlink_loop_is_an_error_not_a_hang(folder, tmp_path):
    bucket_dir = tmp_path / "s3" / BUCKET
    (bucket_dir / "loop").symlink_to(bucket_dir / "loop")
    with pytest.raises(StorageError):
        folder.get_bytes(loc("loop"))
    assert list(folder.list_objects(loc(""))) == []
