"""A real S3-compatible server on loopback (moto's), holding public buckets: objects readable anonymously, with
Range requests, as Earth Search's ``copernicus-dem-30m`` is (a bucket policy granting ``s3:GetObject`` to ``*``)."""
from __future__ import annotations

import json
import secrets
import socket


class PublicS3:
    def __init__(self, region: str = "eu-central-1"):
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.region = region
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        """What GDAL's ``AWS_S3_ENDPOINT`` names (with ``AWS_HTTPS=NO``)."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "PublicS3":
        import boto3

        self.server.start()
        # the owner uploads; moto accepts any keys: made here, so no credential-shaped literal is in the tree
        self.client = boto3.client("s3", endpoint_url=f"http://{self.endpoint}",
                                   aws_access_key_id=secrets.token_hex(10).upper(),
                                   aws_secret_access_key=secrets.token_urlsafe(30), region_name=self.region)
        return self

    def put(self, href: str, data: bytes) -> None:
        """Store ``data`` at ``s3://bucket/key``, the bucket public (created on first use)."""
        bucket, _, key = href.removeprefix("s3://").partition("/")
        if bucket not in {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}:
            self.client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": self.region})
            self.client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                        "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
        # public-read too: moto answers an anonymous HEAD (what GDAL sends first) only then, where S3 answers it
        # under the policy alone (HeadObject needs s3:GetObject)
        self.client.put_object(Bucket=bucket, Key=key, Body=data, ACL="public-read")

    def __exit__(self, *exc) -> None:
        self.server.stop()
