"""boto3 client for hoop's enforcement tests: runs the steps named on the command line against
$HOOP_ENDPOINT with one client per service (one keep-alive connection each) and prints one JSON
line per step: {"step": ..., "ok": bool, "error": str}. Retries are off so a blocked call fails
once, immediately.

Steps: create-bucket:B, delete-bucket:B, put-object:B/K, put-bucket-policy:B, head-bucket:B,
create-table:T, delete-table:T, describe-table:T, create-user:U, get-user:U, sleep:SECONDS,
wait-file:PATH (waits up to 60 s for PATH to exist: the test starts the agent meanwhile, so the
connections opened by earlier steps predate it), connect:HOST:PORT (a plain TCP connect, closed at
once; HOST may be an IPv6 address; a denied connect fails with PermissionError, errno 1)."""
import json
import os
import socket
import time

import boto3
import steps
from botocore.config import Config

endpoint = os.environ["HOOP_ENDPOINT"]
cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=20)
clients = {}


def c(name):
    if name not in clients:
        clients[name] = boto3.client(name, endpoint_url=endpoint, config=cfg)
    return clients[name]


def run(step):
    op, _, arg = step.partition(":")
    if op == "create-bucket":
        c("s3").create_bucket(Bucket=arg, CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})
    elif op == "delete-bucket":
        c("s3").delete_bucket(Bucket=arg)
    elif op == "put-object":
        b, _, k = arg.partition("/")
        c("s3").put_object(Bucket=b, Key=k, Body=b"hoop enforcement test")
    elif op == "put-bucket-policy":
        pol = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{arg}/*"}]}
        c("s3").put_bucket_policy(Bucket=arg, Policy=json.dumps(pol))
    elif op == "get-bucket-policy":
        c("s3").get_bucket_policy(Bucket=arg)
    elif op == "head-bucket":
        c("s3").head_bucket(Bucket=arg)
    elif op == "create-table":
        c("dynamodb").create_table(
            TableName=arg,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    elif op == "delete-table":
        c("dynamodb").delete_table(TableName=arg)
    elif op == "describe-table":
        c("dynamodb").describe_table(TableName=arg)
    elif op == "create-user":
        c("iam").create_user(UserName=arg)
    elif op == "get-user":
        c("iam").get_user(UserName=arg)
    elif op == "sleep":
        time.sleep(float(arg))
    elif op == "wait-file":
        deadline = time.monotonic() + 60
        while not os.path.exists(arg):
            if time.monotonic() > deadline:
                raise TimeoutError(arg)
            time.sleep(0.05)
    elif op == "connect":
        host, _, port = arg.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    else:
        raise SystemExit(f"unknown step {step}")


steps.main(run)
