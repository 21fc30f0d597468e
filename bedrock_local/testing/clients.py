"""boto3 clients pointed at a bedrock-local server (or any endpoint), with the settings tests and
benchmarks use: a region, placeholder credentials (the server's open mode takes any key) and one
retry at most, so that an error shows instead of being retried away. boto3 is imported when a
client is made, not with this module."""

from __future__ import annotations

REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "secret"
# botocore's legacy retry mode counts retries in `max_attempts`: one retry
RETRIES = {"max_attempts": 1}
_DEFAULT = object()


def client(service: str, endpoint_url: str, *, region: str = REGION, access_key: str = ACCESS_KEY,
           secret_key: str = SECRET_KEY, session_token: str | None = None, retries=_DEFAULT, validate: bool = True,
           session=None, **config):
    """A boto3 client of `service` at `endpoint_url`. `retries`: botocore's retries setting (None:
    botocore's default); `validate`: boto3's parameter validation (off to send what boto3 would
    refuse); `session`: a boto3 Session to make it from (one a thread: sessions are not thread-safe);
    `config`: more botocore Config options (read_timeout, connect_timeout, max_pool_connections...)."""
    import boto3
    from botocore.config import Config

    retries = dict(RETRIES) if retries is _DEFAULT else retries
    return (session or boto3).client(
        service, endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, aws_session_token=session_token,
        config=Config(parameter_validation=validate, retries=retries, **config))


def s3_client(endpoint_url: str, region: str = REGION):
    """An S3 client of a test S3 server (moto), botocore's default retries."""
    return client("s3", endpoint_url, region=region, access_key="testing", secret_key="testing", retries=None)
