"""A known mix of calls for hoop's audit end-to-end tests; prints what it did.

  audit_calls.py            fixed mix: S3 (bucket, 3 puts, 2 gets, list), DynamoDB, STS,
                            SecretsManager with a planted secret value
  audit_calls.py --many N   N small calls as fast as it can (heavy ingest), then the count
"""
import json
import os
import sys
import uuid

import boto3

endpoint = os.environ["HOOP_ENDPOINT"]
region = os.environ["AWS_DEFAULT_REGION"]
suffix = uuid.uuid4().hex[:10]


def client(name):
    return boto3.client(name, endpoint_url=endpoint)


if len(sys.argv) > 2 and sys.argv[1] == "--many":
    n = int(sys.argv[2])
    ddb = client("dynamodb")
    sts = client("sts")
    done = 0
    print(json.dumps({"pid": os.getpid(), "started": True}), flush=True)
    for i in range(n):
        if i % 2:
            ddb.list_tables()
        else:
            sts.get_caller_identity()
        done += 1
    print(json.dumps({"pid": os.getpid(), "calls": done}), flush=True)
    sys.exit(0)

bucket = f"hoop-audit-{suffix}"
table = f"hoop-audit-{suffix}"
s3 = client("s3")
s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
for k in ("a.txt", "b.txt", "c.txt"):
    s3.put_object(Bucket=bucket, Key=f"docs/{k}", Body=b"audit " + k.encode())
s3.get_object(Bucket=bucket, Key="docs/a.txt")["Body"].read()
s3.get_object(Bucket=bucket, Key="docs/b.txt")["Body"].read()
s3.list_objects_v2(Bucket=bucket)

ddb = client("dynamodb")
ddb.create_table(
    TableName=table,
    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)
ddb.put_item(TableName=table, Item={"id": {"S": "1"}})
client("sts").get_caller_identity()

sm = client("secretsmanager")
secret_name = f"hoop-audit-secret-{suffix}"
secret_value = "PLANTED-" + uuid.uuid4().hex + "-NEVER-STORE"
sm.create_secret(Name=secret_name, SecretString=secret_value)
assert sm.get_secret_value(SecretId=secret_name)["SecretString"] == secret_value

print(json.dumps({
    "pid": os.getpid(),
    "bucket": bucket,
    "table": table,
    "secret_name": secret_name,
    "secret_value": secret_value,
    "s3_calls": 7,
    "total_calls": 12,
}))
