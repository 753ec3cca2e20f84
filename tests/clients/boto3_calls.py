"""Makes a fixed set of AWS calls with boto3 against $HOOP_ENDPOINT and prints what it did.

Used by hoop's end-to-end tests: each call listed here must appear exactly once in the agent's
records, attributed to this process, with its service, operation, IAM action and resources.
The first calls are made before the principal is known (its account is learned from
GetCallerIdentity), the others after."""
import json
import os
import sys
import uuid

import boto3

endpoint = os.environ["HOOP_ENDPOINT"]
region = os.environ["AWS_DEFAULT_REGION"]
suffix = uuid.uuid4().hex[:10]
bucket = f"hoop-e2e-{suffix}"
table = f"hoop-table-{suffix}"
secret = f"hoop-secret-{suffix}"
big = len(sys.argv) > 1 and sys.argv[1] == "--big"


def client(name):
    return boto3.client(name, endpoint_url=endpoint)


s3 = client("s3")
s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
if big:
    body = os.urandom(1024 * 1024)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    got = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert got == body, "object round trip"
    s3.list_objects_v2(Bucket=bucket)
    print(json.dumps({"pid": os.getpid(), "bucket": bucket}))
    sys.exit(0)

ddb = client("dynamodb")
ddb.create_table(
    TableName=table,
    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)

# From here on the agent knows the signing key's account.
sts = client("sts")
ident = sts.get_caller_identity()

s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello from hoop")
s3.head_object(Bucket=bucket, Key="hello.txt")
assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello from hoop"
s3.get_object_acl(Bucket=bucket, Key="hello.txt")
s3.list_objects_v2(Bucket=bucket)

ddb.put_item(TableName=table, Item={"id": {"S": "1"}, "v": {"S": "x"}})

iam = client("iam")
iam.list_users()
role = f"hoop-role-{suffix}"
trust = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
role_arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
sts.assume_role(RoleArn=role_arn, RoleSessionName="hoop-e2e")

sm = client("secretsmanager")
secret_value = "hoop-e2e-secret-value-" + suffix
sm.create_secret(Name=secret, SecretString=secret_value)
assert sm.get_secret_value(SecretId=secret)["SecretString"] == secret_value

sqs = client("sqs")
queue = f"hoop-queue-{suffix}"
queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
sqs.send_message(QueueUrl=queue_url, MessageBody="hello")

ssm = client("ssm")
parameter = f"/hoop/{suffix}/db-host"
ssm.put_parameter(Name=parameter, Value="db.internal", Type="String")
ssm.get_parameter(Name=parameter)

kms = client("kms")
key_id = kms.create_key()["KeyMetadata"]["KeyId"]
kms.describe_key(KeyId=key_id)

log_group = f"/hoop/{suffix}"
client("logs").create_log_group(logGroupName=log_group)

cluster = f"hoop-cluster-{suffix}"
client("ecs").create_cluster(clusterName=cluster)

ec2 = client("ec2")
instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
ec2.terminate_instances(InstanceIds=[instance])

topic = f"hoop-topic-{suffix}"
client("sns").create_topic(Name=topic)

client("events").describe_event_bus(Name="default")
client("lambda").list_functions()

print(json.dumps({
    "pid": os.getpid(),
    "account": ident["Account"],
    "caller_arn": ident["Arn"],
    "bucket": bucket,
    "table": table,
    "secret": secret,
    "secret_value": secret_value,
    "role_arn": role_arn,
    "queue": queue,
    "queue_url": queue_url,
    "parameter": parameter,
    "key_id": key_id,
    "log_group": log_group,
    "cluster": cluster,
    "instance": instance,
    "topic": topic,
}))
