"""A known mix of calls for hoop's audit end-to-end tests; prints what it did.

  audit_calls.py            fixed mix: S3 (bucket, 3 puts, 2 gets, list), DynamoDB, STS,
                            SecretsManager with a planted secret value
  audit_calls.py --many N   N small calls as fast as it can (heavy ingest), then the count
  audit_calls.py --secrets  planted secrets of other kinds: a KMS Decrypt plaintext, Lambda
                            environment variables, an S3 object body
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

if len(sys.argv) > 1 and sys.argv[1] == "--secrets":
    import base64
    import io
    import zipfile
    planted = {
        "kms_plaintext": "PLANTED-kms-" + uuid.uuid4().hex,
        "lambda_env": "PLANTED-lambda-" + uuid.uuid4().hex,
        "object_body": "PLANTED-body-" + uuid.uuid4().hex,
    }
    kms = client("kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=planted["kms_plaintext"].encode())["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == planted["kms_plaintext"].encode()
    iam = client("iam")
    role = iam.create_role(
        RoleName=f"hoop-audit-fn-{suffix}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("index.py", "def handler(e, c):\n    return 1\n")
    lam = client("lambda")
    fn = f"hoop-audit-fn-{suffix}"
    lam.create_function(
        FunctionName=fn, Runtime="python3.12", Role=role, Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": {"DB_PASSWORD": planted["lambda_env"]}},
    )
    got = lam.get_function_configuration(FunctionName=fn)["Environment"]["Variables"]
    assert got["DB_PASSWORD"] == planted["lambda_env"]
    s3 = client("s3")
    bucket = f"hoop-audit-{suffix}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    s3.put_object(Bucket=bucket, Key="body.txt", Body=planted["object_body"].encode())
    assert s3.get_object(Bucket=bucket, Key="body.txt")["Body"].read() == planted["object_body"].encode()
    print(json.dumps({"pid": os.getpid(), **planted, "kms_plaintext_b64": base64.b64encode(planted["kms_plaintext"].encode()).decode()}))
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
