"""Request shapes the kernel classifier must see through, for hoop's enforcement tests: the
steps named on the command line run against the emulator and print one JSON line each:
{"step": ..., "ok": bool, "error": str, "pid": int}. Retries are off.

S3 calls go to AWS's own regional host names, resolved to the emulator's address (this
process maps *.amazonaws.com to 127.0.0.1; the test certificate covers those names), so boto3
builds exactly the requests it sends to AWS:
  vh-create-bucket:B, vh-delete-bucket:B, vh-put-object:B/K, vh-delete-object:B/K,
  vh-put-bucket-policy:B     virtual-hosted addressing (the bucket in Host)
  presigned-delete-bucket:B, presigned-put-object:B/K
                             SigV4 presigned URLs (the credential in the query, no
                             Authorization), sent with urllib3
  presigned-v2-delete-bucket:B, presigned-v2-put-object:B/K
                             the same with botocore's default presigner here: S3's legacy
                             SigV2 (`AWSAccessKeyId=`), path-style
  head-bucket:B, head-object:B/K, get-bucket-policy:B
                             path-style checks of the emulator's state
IAM through the query protocol with every parameter in the URL (`GET /?Action=...`), signed
with botocore's SigV4 signer and sent with urllib3:
  url-create-user:U, get-user:U
CloudWatch, which botocore speaks over Smithy RPC v2 CBOR (`POST /service/.../operation/Op`):
  cw-put-metric:NAMESPACE, cw-list-metrics:NAMESPACE
  cw-metric-exists:NAMESPACE  fails unless the namespace holds a metric"""
import json
import os
import socket

import boto3
import steps
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

port = os.environ["HOOP_ENDPOINT"].rsplit(":", 1)[1]
region = os.environ["AWS_DEFAULT_REGION"]
s3_host = f"s3.{region}.amazonaws.com"
_getaddrinfo = socket.getaddrinfo


def _local(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".amazonaws.com"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local

retries = {"total_max_attempts": 1, "mode": "standard"}
vh = boto3.client(
    "s3",
    endpoint_url=f"https://{s3_host}:{port}",
    config=Config(retries=retries, s3={"addressing_style": "virtual"}, read_timeout=20),
)
v4 = boto3.client(
    "s3",
    endpoint_url=f"https://{s3_host}:{port}",
    config=Config(retries=retries, signature_version="s3v4", s3={"addressing_style": "virtual"}),
)
path = boto3.client(
    "s3",
    endpoint_url=f"https://{s3_host}:{port}",
    config=Config(retries=retries, s3={"addressing_style": "path"}, read_timeout=20),
)
http = urllib3.PoolManager(ca_certs=os.environ["AWS_CA_BUNDLE"], retries=False, timeout=20)


def check(resp):
    if resp.status >= 300:
        raise RuntimeError(f"HTTP {resp.status}: {resp.data[:200]!r}")


def presigned(client, method, op, params, body=None):
    url = client.generate_presigned_url(op, Params=params, ExpiresIn=300)
    check(http.request(method, url, body=body))


def url_query(service, params):
    endpoint = os.environ["HOOP_ENDPOINT"]
    req = AWSRequest(method="GET", url=f"{endpoint}/", params=params)
    SigV4Auth(boto3.Session().get_credentials(), service, region).add_auth(req)
    prepared = req.prepare()
    check(http.request("GET", prepared.url, headers=dict(prepared.headers)))


def cw():
    return boto3.client("cloudwatch", endpoint_url=os.environ["HOOP_ENDPOINT"], config=Config(retries=retries))


def run(step):
    op, _, arg = step.partition(":")
    b, _, k = arg.partition("/")
    if op == "vh-create-bucket":
        vh.create_bucket(Bucket=b, CreateBucketConfiguration={"LocationConstraint": region})
    elif op == "vh-delete-bucket":
        vh.delete_bucket(Bucket=b)
    elif op == "vh-put-object":
        vh.put_object(Bucket=b, Key=k, Body=b"hoop virtual-hosted object")
    elif op == "vh-delete-object":
        vh.delete_object(Bucket=b, Key=k)
    elif op == "vh-put-bucket-policy":
        pol = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{b}/*"}]}
        vh.put_bucket_policy(Bucket=b, Policy=json.dumps(pol))
    elif op in ("presigned-delete-bucket", "presigned-v2-delete-bucket"):
        presigned(v4 if op == "presigned-delete-bucket" else vh, "DELETE", "delete_bucket", {"Bucket": b})
    elif op in ("presigned-put-object", "presigned-v2-put-object"):
        client = v4 if op == "presigned-put-object" else vh
        presigned(client, "PUT", "put_object", {"Bucket": b, "Key": k}, body=b"hoop presigned object")
    elif op == "head-bucket":
        path.head_bucket(Bucket=b)
    elif op == "head-object":
        path.head_object(Bucket=b, Key=k)
    elif op == "get-bucket-policy":
        path.get_bucket_policy(Bucket=b)
    elif op == "url-create-user":
        url_query("iam", {"Action": "CreateUser", "UserName": arg, "Version": "2010-05-08"})
    elif op == "cw-put-metric":
        cw().put_metric_data(Namespace=arg, MetricData=[{"MetricName": "hoop", "Value": 1.0}])
    elif op in ("cw-list-metrics", "cw-metric-exists"):
        found = cw().list_metrics(Namespace=arg)["Metrics"]
        if op == "cw-metric-exists" and not found:
            raise LookupError(f"no metric in {arg}")
    elif op == "get-user":
        boto3.client("iam", endpoint_url=os.environ["HOOP_ENDPOINT"], config=Config(retries=retries)).get_user(UserName=arg)
    else:
        raise SystemExit(f"unknown step {step}")


steps.main(run)
