"""Makes a fixed set of AWS calls with boto3 against $HOOP_ENDPOINT and prints what it did.

Used by hoop's end-to-end tests: each call listed in the output must appear exactly once in
the agent's records, attributed to this process."""
import json
import os
import sys
import uuid

import boto3

endpoint = os.environ["HOOP_ENDPOINT"]
suffix = uuid.uuid4().hex[:10]
bucket = f"hoop-e2e-{suffix}"
table = f"hoop-table-{suffix}"
secret = f"hoop-secret-{suffix}"
big = len(sys.argv) > 1 and sys.argv[1] == "--big"


def client(name):
    return boto3.client(name, endpoint_url=endpoint)


s3 = client("s3")
s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})
if big:
    body = os.urandom(1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    got = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert got == body, "object round trip"
    s3.list_objects_v2(Bucket=bucket)
    print(json.dumps({"pid": os.getpid(), "bucket": bucket}))
    sys.exit(0)

s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from hoop")
assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello from hoop"
s3.list_objects_v2(Bucket=bucket)

ddb = client("dynamodb")
ddb.create_table(
    TableName=table,
    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)
ddb.put_item(TableName=table, Item={"id": {"S": "1"}, "v": {"S": "x"}})

arn = client("sts").get_caller_identity()["Arn"]
client("iam").list_users()

sm = client("secretsmanager")
secret_value = "hoop-e2e-secret-value-" + suffix
sm.create_secret(Name=secret, SecretString=secret_value)
assert sm.get_secret_value(SecretId=secret)["SecretString"] == secret_value

print(json.dumps({
    "pid": os.getpid(),
    "bucket": bucket,
    "table": table,
    "secret": secret,
    "secret_value": secret_value,
    "caller_arn": arn,
}))
