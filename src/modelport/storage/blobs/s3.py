"""Blobs in an S3 bucket, under ``<prefix>/sha256/<hash>``.

A PUT (or a completed multipart upload) becomes visible all at once, so uploading straight to the
final key is already an atomic commit; an interrupted multipart upload is never visible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from modelport.errors import BlobUnavailable
from modelport.settings import Settings
from modelport.storage.blobs.local import _check_hash

log = logging.getLogger(__name__)
_TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=4)


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        url = urlparse(settings.blob_url)
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        return cls(client, url.netloc, url.path)

    def _key(self, sha256: str) -> str:
        name = f"sha256/{_check_hash(sha256)}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, staged: Path, sha256: str) -> None:
        try:
            if self.has(sha256):
                self._touch(self._key(sha256))
                return
            self.client.upload_file(str(staged), self.bucket, self._key(sha256), Config=_TRANSFER)
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not write blob {sha256} to s3://{self.bucket}: {e}") from e

    def _touch(self, key: str) -> None:
        """Refresh LastModified so cleanup's grace period covers the ingest about to reference it."""
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
            )
        except ClientError:
            # Best effort: single-request copies stop at 5 GB; such a blob keeps its old age.
            log.debug("could not refresh %s", key)

    def has(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise BlobUnavailable(f"s3://{self.bucket} is not answering: {e}") from e
        except BotoCoreError as e:
            raise BlobUnavailable(f"s3://{self.bucket} is not answering: {e}") from e

    def open(self, sha256: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not read blob {sha256}: {e}") from e
        return cast(BinaryIO, body)

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self._key(sha256), Range=f"bytes={start}-{start + length - 1}"
            )
            return cast(bytes, resp["Body"].read())
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not read blob {sha256}: {e}") from e

    def materialize(self, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(sha256), str(dest), Config=_TRANSFER)
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not read blob {sha256}: {e}") from e

    def delete(self, sha256: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not delete blob {sha256}: {e}") from e

    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        start = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"].rsplit("/", 1)[-1], obj["LastModified"]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def local_path(self, sha256: str) -> Path | None:
        return None

    # --- DirectTransfer: clients move bytes straight to and from the bucket ---------------------------
    def _upload_key(self, name: str) -> str:
        return f"{self.prefix}/multipart/{name}" if self.prefix else f"multipart/{name}"

    def start_upload(self, name: str) -> str:
        try:
            return str(self.client.create_multipart_upload(Bucket=self.bucket, Key=self._upload_key(name))["UploadId"])
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not start an upload in s3://{self.bucket}: {e}") from e

    def part_url(self, name: str, upload: str, number: int, length: int | None, ttl_s: float) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._upload_key(name), "UploadId": upload}
        params["PartNumber"] = number
        if length is not None:  # signed in: the part must be exactly that long
            params["ContentLength"] = length
        return str(self.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=int(ttl_s)))

    def finish_upload(self, name: str, upload: str, parts: list[tuple[int, str]]) -> tuple[str, int]:
        key = self._upload_key(name)
        listing = {"Parts": [{"PartNumber": n, "ETag": f'"{etag.strip(chr(34))}"'} for n, etag in sorted(parts)]}
        try:
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload=listing)
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"the parts could not be joined in s3://{self.bucket}: {e}") from e
        return str(head["ETag"]).strip('"'), int(head["ContentLength"])

    def fetch_upload(self, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._upload_key(name), str(dest), Config=_TRANSFER)
        except (BotoCoreError, ClientError) as e:
            raise BlobUnavailable(f"could not read the uploaded file {name}: {e}") from e

    def drop_upload(self, name: str, upload: str) -> None:
        key = self._upload_key(name)
        for call, extra in (("abort_multipart_upload", {"UploadId": upload}), ("delete_object", {})):
            try:
                getattr(self.client, call)(Bucket=self.bucket, Key=key, **extra)
            except ClientError:
                log.debug("%s of %s: nothing to do", call, key)

    def blob_url(self, sha256: str, ttl_s: float) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(sha256)}
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=int(ttl_s)))
