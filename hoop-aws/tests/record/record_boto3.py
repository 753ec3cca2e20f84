#!/usr/bin/env python3
"""Records the requests boto3 and the AWS CLI (v1, in-process) build, against moto.

Usage: python3 hoop-aws/tests/record/record_boto3.py [PORT]   (PORT in 47000-47099)
Writes hoop-aws/tests/fixtures/boto3.jsonl and awscli.jsonl. Each line is one request as sent
(signature redacted) with the botocore service name and operation that made it.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

os.environ.update(common.DUMMY_ENV)
os.environ.pop("AWS_CA_BUNDLE", None)
os.environ.pop("AWS_PROFILE", None)

import boto3  # noqa: E402
import botocore.awsrequest  # noqa: E402
import botocore.config  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "fixtures")


class Recorder:
    def __init__(self, sdk):
        self.sdk = sdk
        self.rows = []
        self.current = None

    def before_call(self, model, **_):
        self.current = (model.service_model.service_name, model.name)

    def before_send(self, request, **_):
        svc, op = self.current or ("?", "?")
        self.rows.append(
            common.record(self.sdk, request.method, request.url, request.headers.items(),
                          request.body, svc, op)
        )
        return None

    def attach(self, session_or_client_events):
        session_or_client_events.register("before-call.*.*", self.before_call)
        session_or_client_events.register("before-send.*.*", self.before_send)


def try_(f, *a, **kw):
    try:
        return f(*a, **kw)
    except Exception as e:  # moto does not implement everything; the request is recorded.
        print(f"  ({f.__name__ if hasattr(f, '__name__') else f}: {type(e).__name__})", file=sys.stderr)
        return None


def boto3_calls(endpoint, rec):
    session = boto3.session.Session(region_name="us-east-1")
    rec.attach(session.events)

    def c(name, **kw):
        return session.client(name, endpoint_url=endpoint, **kw)

    s3 = c("s3")
    t = try_
    t(s3.create_bucket, Bucket="rec-bucket")
    t(s3.put_object, Bucket="rec-bucket", Key="dir/a b.txt", Body=b"hello")
    t(s3.get_object, Bucket="rec-bucket", Key="dir/a b.txt")
    t(s3.head_object, Bucket="rec-bucket", Key="dir/a b.txt")
    t(s3.head_bucket, Bucket="rec-bucket")
    t(s3.list_objects_v2, Bucket="rec-bucket", Prefix="dir/")
    t(s3.list_objects, Bucket="rec-bucket")
    t(s3.list_object_versions, Bucket="rec-bucket")
    t(s3.list_buckets)
    t(s3.get_bucket_location, Bucket="rec-bucket")
    t(s3.put_bucket_tagging, Bucket="rec-bucket", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    t(s3.get_bucket_tagging, Bucket="rec-bucket")
    t(s3.delete_bucket_tagging, Bucket="rec-bucket")
    t(s3.put_object_tagging, Bucket="rec-bucket", Key="dir/a b.txt", Tagging={"TagSet": []})
    t(s3.get_object_tagging, Bucket="rec-bucket", Key="dir/a b.txt")
    t(s3.get_object_acl, Bucket="rec-bucket", Key="dir/a b.txt")
    t(s3.get_bucket_acl, Bucket="rec-bucket")
    t(s3.get_bucket_versioning, Bucket="rec-bucket")
    t(s3.put_bucket_versioning, Bucket="rec-bucket", VersioningConfiguration={"Status": "Enabled"})
    t(s3.get_bucket_policy, Bucket="rec-bucket")
    t(s3.get_bucket_encryption, Bucket="rec-bucket")
    t(s3.copy_object, Bucket="rec-bucket", Key="copy.txt", CopySource={"Bucket": "rec-bucket", "Key": "dir/a b.txt"})
    mpu = t(s3.create_multipart_upload, Bucket="rec-bucket", Key="big.bin")
    if mpu:
        uid = mpu["UploadId"]
        part = t(s3.upload_part, Bucket="rec-bucket", Key="big.bin", UploadId=uid, PartNumber=1, Body=b"x" * 16)
        t(s3.list_parts, Bucket="rec-bucket", Key="big.bin", UploadId=uid)
        t(s3.list_multipart_uploads, Bucket="rec-bucket")
        if part:
            t(s3.complete_multipart_upload, Bucket="rec-bucket", Key="big.bin", UploadId=uid,
              MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
        mpu2 = t(s3.create_multipart_upload, Bucket="rec-bucket", Key="aborted.bin")
        if mpu2:
            t(s3.abort_multipart_upload, Bucket="rec-bucket", Key="aborted.bin", UploadId=mpu2["UploadId"])
    t(s3.delete_objects, Bucket="rec-bucket", Delete={"Objects": [{"Key": "copy.txt"}]})
    t(s3.delete_object, Bucket="rec-bucket", Key="dir/a b.txt")
    # Presigned GET, sent with a plain HTTP client: the credential is in the query string.
    presigner = c("s3", config=botocore.config.Config(signature_version="s3v4"))
    url = presigner.generate_presigned_url("get_object", Params={"Bucket": "rec-bucket", "Key": "big.bin"})
    rec.rows.append(common.record("boto3", "GET", url, [], b"", "s3", "GetObject", note="presigned"))
    # Virtual-hosted style against the real AWS host name (never sent: recorded in before-send
    # and short-circuited by returning a response).
    vh = session.client("s3", region_name="eu-west-1",
                        config=botocore.config.Config(s3={"addressing_style": "virtual"}))
    short = lambda **_: botocore.awsrequest.AWSResponse("https://x", 200, {}, None)  # noqa: E731
    vh.meta.events.register_last("before-send.*.*", short)
    t(vh.get_object, Bucket="vh-bucket", Key="k/1.txt")
    t(vh.put_object, Bucket="vh-bucket", Key="k/2.txt", Body=b"x")
    t(vh.list_objects_v2, Bucket="vh-bucket")
    for name in ("dynamodb", "sts", "sqs", "kms", "ssm", "lambda"):
        real = session.client(name, region_name="eu-west-1")
        real.meta.events.register_last("before-send.*.*", short)
        if name == "dynamodb":
            t(real.describe_table, TableName="real-host-table")
        elif name == "sts":
            t(real.get_caller_identity)
        elif name == "sqs":
            t(real.list_queues)
        elif name == "kms":
            t(real.list_keys)
        elif name == "ssm":
            t(real.get_parameter, Name="/real/host")
        elif name == "lambda":
            t(real.get_function, FunctionName="real-host-fn")
    t(s3.delete_bucket, Bucket="rec-bucket")

    ddb = c("dynamodb")
    t(ddb.create_table, TableName="rec-table", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
      AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    t(ddb.put_item, TableName="rec-table", Item={"id": {"S": "1"}})
    t(ddb.get_item, TableName="rec-table", Key={"id": {"S": "1"}})
    t(ddb.query, TableName="rec-table", KeyConditionExpression="id = :v", ExpressionAttributeValues={":v": {"S": "1"}})
    t(ddb.scan, TableName="rec-table")
    t(ddb.batch_get_item, RequestItems={"rec-table": {"Keys": [{"id": {"S": "1"}}]}})
    t(ddb.update_item, TableName="rec-table", Key={"id": {"S": "1"}}, UpdateExpression="SET a = :a",
      ExpressionAttributeValues={":a": {"S": "x"}})
    t(ddb.describe_table, TableName="rec-table")
    t(ddb.list_tables)
    t(ddb.delete_item, TableName="rec-table", Key={"id": {"S": "1"}})
    t(ddb.delete_table, TableName="rec-table")

    sts = c("sts")
    t(sts.get_caller_identity)
    t(sts.assume_role, RoleArn="arn:aws:iam::123456789012:role/rec-role", RoleSessionName="rec")
    t(sts.get_session_token)

    iam = c("iam")
    t(iam.create_user, UserName="rec-user")
    t(iam.get_user, UserName="rec-user")
    t(iam.create_role, RoleName="rec-role", AssumeRolePolicyDocument="{}")
    t(iam.create_policy, PolicyName="rec-policy", PolicyDocument='{"Version":"2012-10-17","Statement":[]}')
    t(iam.attach_role_policy, RoleName="rec-role", PolicyArn="arn:aws:iam::123456789012:policy/rec-policy")
    t(iam.list_roles)
    t(iam.delete_user, UserName="rec-user")

    sm = c("secretsmanager")
    t(sm.create_secret, Name="rec/secret", SecretString="s3cr3t")
    t(sm.get_secret_value, SecretId="rec/secret")
    t(sm.describe_secret, SecretId="rec/secret")
    t(sm.list_secrets)
    t(sm.delete_secret, SecretId="rec/secret", ForceDeleteWithoutRecovery=True)

    ssm = c("ssm")
    t(ssm.put_parameter, Name="/rec/param", Value="v", Type="String")
    t(ssm.get_parameter, Name="/rec/param")
    t(ssm.get_parameters, Names=["/rec/param", "other"])
    t(ssm.get_parameters_by_path, Path="/rec")
    t(ssm.delete_parameter, Name="/rec/param")

    sqs = c("sqs")
    q = t(sqs.create_queue, QueueName="rec-queue")
    qurl = q["QueueUrl"] if q else endpoint + "/123456789012/rec-queue"
    t(sqs.send_message, QueueUrl=qurl, MessageBody="m")
    t(sqs.receive_message, QueueUrl=qurl)
    t(sqs.get_queue_attributes, QueueUrl=qurl, AttributeNames=["All"])
    t(sqs.delete_queue, QueueUrl=qurl)

    sns = c("sns")
    topic = t(sns.create_topic, Name="rec-topic")
    tarn = topic["TopicArn"] if topic else "arn:aws:sns:us-east-1:123456789012:rec-topic"
    t(sns.publish, TopicArn=tarn, Message="m")
    t(sns.list_topics)

    kms = c("kms")
    key = t(kms.create_key)
    kid = key["KeyMetadata"]["KeyId"] if key else "1234abcd-12ab-34cd-56ef-1234567890ab"
    t(kms.encrypt, KeyId=kid, Plaintext=b"x")
    t(kms.describe_key, KeyId="alias/rec")
    t(kms.list_keys)

    ec2 = c("ec2")
    t(ec2.describe_instances)
    run = t(ec2.run_instances, ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro")
    iid = run["Instances"][0]["InstanceId"] if run else "i-0123456789abcdef0"
    t(ec2.describe_instances, InstanceIds=[iid])
    t(ec2.stop_instances, InstanceIds=[iid])
    t(ec2.terminate_instances, InstanceIds=[iid])
    t(ec2.describe_vpcs)
    t(ec2.describe_security_groups)

    lam = c("lambda")
    t(lam.list_functions)
    t(lam.get_function, FunctionName="rec-fn")
    t(lam.invoke, FunctionName="rec-fn", Payload=b"{}")

    logs = c("logs")
    t(logs.create_log_group, logGroupName="/rec/group")
    t(logs.describe_log_groups, logGroupNamePrefix="/rec")
    t(logs.put_log_events, logGroupName="/rec/group", logStreamName="s", logEvents=[{"timestamp": 1, "message": "m"}])

    kin = c("kinesis")
    t(kin.create_stream, StreamName="rec-stream", ShardCount=1)
    t(kin.describe_stream, StreamName="rec-stream")
    t(kin.list_streams)

    cfn = c("cloudformation")
    t(cfn.list_stacks)
    t(cfn.describe_stacks, StackName="rec-stack")

    ecs = c("ecs")
    t(ecs.create_cluster, clusterName="rec-cluster")
    t(ecs.list_services, cluster="rec-cluster")
    t(ecs.describe_services, cluster="rec-cluster", services=["rec-svc"])

    eks = c("eks")
    t(eks.list_clusters)
    t(eks.describe_cluster, name="rec-eks")

    rds = c("rds")
    t(rds.describe_db_instances, DBInstanceIdentifier="rec-db")

    sfn = c("stepfunctions")
    t(sfn.list_state_machines)
    t(sfn.describe_state_machine, stateMachineArn="arn:aws:states:us-east-1:123456789012:stateMachine:rec")

    ev = c("events")
    t(ev.list_event_buses)
    t(ev.put_events, Entries=[{"Source": "rec", "DetailType": "t", "Detail": "{}", "EventBusName": "default"}])
    t(ev.describe_event_bus, Name="default")

    ecr = c("ecr")
    t(ecr.create_repository, repositoryName="rec-repo")
    t(ecr.describe_repositories, repositoryNames=["rec-repo"])
    t(ecr.get_authorization_token)

    cw = c("cloudwatch")
    t(cw.put_metric_data, Namespace="rec", MetricData=[{"MetricName": "m", "Value": 1.0}])
    t(cw.list_metrics)
    t(cw.describe_alarms)


def cli_calls(endpoint, rec):
    from awscli.clidriver import create_clidriver

    commands = [
        ["s3api", "create-bucket", "--bucket", "cli-bucket"],
        ["s3api", "put-object", "--bucket", "cli-bucket", "--key", "x/y.txt"],
        ["s3api", "list-objects-v2", "--bucket", "cli-bucket"],
        ["s3", "ls", "s3://cli-bucket/"],
        ["s3api", "get-bucket-tagging", "--bucket", "cli-bucket"],
        ["s3api", "delete-object", "--bucket", "cli-bucket", "--key", "x/y.txt"],
        ["sts", "get-caller-identity"],
        ["dynamodb", "list-tables"],
        ["dynamodb", "describe-table", "--table-name", "cli-table"],
        ["iam", "list-users"],
        ["iam", "get-role", "--role-name", "cli-role"],
        ["secretsmanager", "list-secrets"],
        ["ssm", "get-parameter", "--name", "/cli/p"],
        ["sqs", "list-queues"],
        ["sns", "list-topics"],
        ["kms", "list-keys"],
        ["ec2", "describe-instances"],
        ["ec2", "describe-regions"],
        ["lambda", "list-functions"],
        ["logs", "describe-log-groups"],
        ["cloudformation", "list-stacks"],
        ["ecs", "list-clusters"],
        ["kinesis", "list-streams"],
        ["events", "list-rules"],
        ["cloudwatch", "list-metrics"],
    ]
    for cmd in commands:
        driver = create_clidriver()
        rec.attach(driver.session)
        with open(os.devnull, "w") as devnull:
            old = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = devnull
            try:
                driver.main(["--endpoint-url", endpoint, "--region", "us-east-1", "--output", "json"] + cmd)
            except SystemExit:
                pass
            finally:
                sys.stdout, sys.stderr = old


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 47010
    with common.moto(port) as endpoint:
        rec = Recorder("boto3")
        boto3_calls(endpoint, rec)
        common.write(os.path.join(FIXTURES, "boto3.jsonl"), rec.rows)
        rec = Recorder("awscli")
        cli_calls(endpoint, rec)
        common.write(os.path.join(FIXTURES, "awscli.jsonl"), rec.rows)


if __name__ == "__main__":
    main()
