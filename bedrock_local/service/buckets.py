"""Which buckets a request may name. Every s3:// URI of a request (batch input and output, training
and validation data, customization output, a model to import) goes through `s3_location`:

- the bucket where bedrock-local keeps model artifacts (--model-bucket) is no request's to read or
  write: models of every account live there, reached only through the API;
- a bucket the credentials file lists under an account is that account's alone; a bucket it does not
  list belongs to whichever account names it (the embedded store's folders are shared, as in open mode);
- `s3BucketOwner`, when given, must be the bucket's owner, as S3 checks an expected bucket owner.

Refusals are AccessDeniedException (HTTP 403), S3's answer to a bucket one may not use."""

from bedrock_local.service.context import Context
from bedrock_local.service.errors import AccessDeniedException, ValidationException
from bedrock_local.storage import InvalidS3Uri, S3Location


def owner(ctx: Context, bucket: str) -> str:
    return ctx.bucket_owners.get(bucket, ctx.account)


def s3_location(ctx: Context, uri: str, member: str, expected_owner: str | None = None) -> S3Location:
    """The location `uri` names, once the caller may use it (see the module's rules)."""
    try:
        loc = S3Location.parse(uri)
    except InvalidS3Uri as exc:
        raise ValidationException(f"Invalid S3 URI at '{member}': {exc}")
    if loc.bucket == ctx.settings.model_bucket:
        raise AccessDeniedException(
            f"Access Denied: '{member}' names the bucket '{loc.bucket}', where bedrock-local keeps the artifacts of "
            f"custom models; requests may not read or write it. Name a bucket of your own.")
    if owner(ctx, loc.bucket) != ctx.account:
        raise AccessDeniedException(
            f"Access Denied: the bucket '{loc.bucket}' named at '{member}' belongs to another account; "
            f"account {ctx.account} may not read or write it.")
    if expected_owner is not None and expected_owner != owner(ctx, loc.bucket):
        raise AccessDeniedException(
            f"Access Denied: '{member}' names the bucket '{loc.bucket}' with s3BucketOwner {expected_owner}, "
            f"and that account does not own the bucket.")
    return loc
