"""The S3 API server fixtures (tests/s3.py) for the object-store tests."""

from tests.s3 import s3_bucket, s3_server  # noqa: F401
