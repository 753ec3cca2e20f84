"""Assumes a role through STS with the long-term test keys, then makes calls with the
temporary keys AssumeRole returned. Prints what it did (including the temporary secrets, so
the test can check that the agent never stores them).

Used by hoop's end-to-end identity tests."""
import json
import os
import uuid

import boto3

endpoint = os.environ["HOOP_ENDPOINT"]
region = os.environ["AWS_DEFAULT_REGION"]
suffix = uuid.uuid4().hex[:10]

long_term = boto3.session.Session()
# Calls signed with the long-term key.
long_term.client("s3", endpoint_url=endpoint).list_buckets()
long_term.client("dynamodb", endpoint_url=endpoint).list_tables()
resp = long_term.client("sts", endpoint_url=endpoint).assume_role(
    RoleArn="arn:aws:iam::123456789012:role/hoop-e2e-role",
    RoleSessionName=f"hoop-{suffix}",
    DurationSeconds=3600,
)
creds = resp["Credentials"]
temp = boto3.session.Session(
    aws_access_key_id=creds["AccessKeyId"],
    aws_secret_access_key=creds["SecretAccessKey"],
    aws_session_token=creds["SessionToken"],
    region_name=region,
)
bucket = f"hoop-role-{suffix}"
s3 = temp.client("s3", endpoint_url=endpoint)
s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
s3.put_object(Bucket=bucket, Key="k.txt", Body=b"from the assumed role")
s3.list_objects_v2(Bucket=bucket)
temp.client("dynamodb", endpoint_url=endpoint).list_tables()
temp.client("secretsmanager", endpoint_url=endpoint).list_secrets()
temp.client("sts", endpoint_url=endpoint).get_caller_identity()

print(json.dumps({
    "pid": os.getpid(),
    "bucket": bucket,
    "role_arn": resp["AssumedRoleUser"]["Arn"],
    "access_key_id": creds["AccessKeyId"],
    "secret_access_key": creds["SecretAccessKey"],
    "session_token": creds["SessionToken"],
    "temp_calls": 6,
}))
