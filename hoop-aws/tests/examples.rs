//! Hand-written requests with the exact service, operation, IAM action and resources expected.

use hoop_aws::{HttpRequest, classify, sigv4};

fn auth(scope: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/{scope}/aws4_request, SignedHeaders=host;x-amz-date, Signature=0"
    )
}

struct Case<'a> {
    method: &'a str,
    target: &'a str,
    host: &'a str,
    scope: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    body: &'a str,
    expect: (&'a str, &'a str, &'a str),
    resources: &'a [&'a str],
}

/// The principal's account, as the agent passes it once it knows it.
const ACCOUNT: &str = "123456789012";

fn run(c: &Case<'_>) {
    run_as(c, Some(ACCOUNT));
}

fn run_as(c: &Case<'_>, account: Option<&str>) {
    let auth_value = c.scope.map(auth);
    let mut headers: Vec<(&str, &[u8])> = vec![("Host", c.host.as_bytes())];
    if let Some(a) = &auth_value {
        headers.push(("Authorization", a.as_bytes()));
    }
    for (k, v) in c.headers {
        headers.push((k, v.as_bytes()));
    }
    let req = HttpRequest {
        method: c.method,
        target: c.target,
        headers: &headers,
        body: c.body.as_bytes(),
    };
    let cred = sigv4::parse(&req);
    let call = classify(&req, cred.as_ref(), None, account)
        .unwrap_or_else(|| panic!("not classified: {} {} {}", c.method, c.host, c.target));
    assert_eq!(
        (
            call.service.as_str(),
            call.operation.as_str(),
            call.iam_action.as_str()
        ),
        c.expect,
        "{} {} {}",
        c.method,
        c.host,
        c.target
    );
    assert_eq!(call.resources, c.resources, "{} {}", c.method, c.target);
}

#[test]
fn examples() {
    let cases = [
        Case {
            method: "GET",
            target: "/my-bucket/a/b%20c.txt",
            host: "127.0.0.1:4566",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "GetObject", "s3:GetObject"),
            resources: &["arn:aws:s3:::my-bucket/a/b c.txt"],
        },
        Case {
            method: "GET",
            target: "/?list-type=2&prefix=x",
            host: "my-bucket.s3.us-west-2.amazonaws.com",
            scope: Some("us-west-2/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "ListObjectsV2", "s3:ListBucket"),
            resources: &["arn:aws:s3:::my-bucket"],
        },
        Case {
            method: "PUT",
            target: "/k?partNumber=1&uploadId=abc",
            host: "b.s3.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "UploadPart", "s3:PutObject"),
            resources: &["arn:aws:s3:::b/k"],
        },
        Case {
            method: "PUT",
            target: "/dst/key",
            host: "s3.cn-north-1.amazonaws.com.cn",
            scope: Some("cn-north-1/s3"),
            headers: &[("x-amz-copy-source", "/src/o%2Fk?versionId=1")],
            body: "",
            expect: ("s3", "CopyObject", "s3:PutObject"),
            resources: &["arn:aws-cn:s3:::dst/key", "arn:aws-cn:s3:::src/o/k"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "dynamodb.us-east-1.amazonaws.com",
            scope: Some("us-east-1/dynamodb"),
            headers: &[("X-Amz-Target", "DynamoDB_20120810.GetItem")],
            body: r#"{"TableName":"users","Key":{"id":{"S":"1"}}}"#,
            expect: ("dynamodb", "GetItem", "dynamodb:GetItem"),
            resources: &["arn:aws:dynamodb:us-east-1:123456789012:table/users"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sts.amazonaws.com",
            scope: Some("us-east-1/sts"),
            headers: &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body: "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fdeploy&RoleSessionName=s",
            expect: ("sts", "AssumeRole", "sts:AssumeRole"),
            resources: &["arn:aws:iam::111122223333:role/deploy"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ec2.eu-west-1.amazonaws.com",
            scope: Some("eu-west-1/ec2"),
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: "Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-1&InstanceId.2=i-2",
            expect: ("ec2", "TerminateInstances", "ec2:TerminateInstances"),
            resources: &[
                "arn:aws:ec2:eu-west-1:123456789012:instance/i-1",
                "arn:aws:ec2:eu-west-1:123456789012:instance/i-2",
            ],
        },
        Case {
            method: "POST",
            target: "/2015-03-31/functions/my-fn/invocations",
            host: "lambda.us-east-1.amazonaws.com",
            scope: Some("us-east-1/lambda"),
            headers: &[],
            body: "{}",
            expect: ("lambda", "Invoke", "lambda:InvokeFunction"),
            resources: &["arn:aws:lambda:us-east-1:123456789012:function:my-fn"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "monitoring.us-east-1.amazonaws.com",
            scope: Some("us-east-1/monitoring"),
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: "Action=PutMetricData&Version=2010-08-01&Namespace=x",
            expect: ("cloudwatch", "PutMetricData", "cloudwatch:PutMetricData"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/service/GraniteServiceVersion20100801/operation/GetMetricData",
            host: "monitoring.us-east-1.amazonaws.com",
            scope: Some("us-east-1/monitoring"),
            headers: &[("smithy-protocol", "rpc-v2-cbor")],
            body: "",
            expect: ("cloudwatch", "GetMetricData", "cloudwatch:GetMetricData"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sqs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sqs"),
            headers: &[("X-Amz-Target", "AmazonSQS.SendMessage")],
            body: r#"{"QueueUrl":"https://sqs.us-east-1.amazonaws.com/111122223333/jobs","MessageBody":"x"}"#,
            expect: ("sqs", "SendMessage", "sqs:SendMessage"),
            resources: &["arn:aws:sqs:us-east-1:111122223333:jobs"],
        },
        Case {
            method: "GET",
            target: "/reports/q1.csv",
            host: "finance-111122223333.s3-accesspoint.us-west-2.amazonaws.com",
            scope: Some("us-west-2/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "GetObject", "s3:GetObject"),
            resources: &[
                "arn:aws:s3:us-west-2:111122223333:accesspoint/finance/object/reports/q1.csv",
            ],
        },
        Case {
            method: "GET",
            target: "/logs/app.log?versionId=3",
            host: "b.s3-fips.dualstack.us-gov-west-1.amazonaws.com",
            scope: None,
            headers: &[],
            body: "",
            expect: ("s3", "GetObject", "s3:GetObjectVersion"),
            resources: &["arn:aws-us-gov:s3:::b/logs/app.log"],
        },
        Case {
            method: "GET",
            target: "/?Action=GetCallerIdentity&Version=2011-06-15",
            host: "sts.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sts"),
            headers: &[],
            body: "",
            expect: ("sts", "GetCallerIdentity", "sts:GetCallerIdentity"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/",
            host: "localhost:4566",
            scope: Some("eu-central-1/kms"),
            headers: &[("X-Amz-Target", "TrentService.Decrypt")],
            body: r#"{"KeyId":"alias/app","CiphertextBlob":"AAAA"}"#,
            expect: ("kms", "Decrypt", "kms:Decrypt"),
            resources: &["arn:aws:kms:eu-central-1:123456789012:alias/app"],
        },
        Case {
            method: "GET",
            target: "/clusters/prod/node-groups/ng1",
            host: "eks.us-east-1.amazonaws.com",
            scope: Some("us-east-1/eks"),
            headers: &[],
            body: "",
            expect: ("eks", "DescribeNodegroup", "eks:DescribeNodegroup"),
            resources: &["arn:aws:eks:us-east-1:123456789012:nodegroup/prod/ng1/*"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ssm.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ssm"),
            headers: &[("X-Amz-Target", "AmazonSSM.GetParameters")],
            body: r#"{"Names":["/app/db","plain"],"WithDecryption":true}"#,
            expect: ("ssm", "GetParameters", "ssm:GetParameters"),
            resources: &[
                "arn:aws:ssm:us-east-1:123456789012:parameter/app/db",
                "arn:aws:ssm:us-east-1:123456789012:parameter/plain",
            ],
        },
    ];
    for c in &cases {
        run(c);
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// IAM actions that are not `<prefix>:<Operation>`, from `data/iam.tsv`.
#[test]
fn iam_action_exceptions() {
    let cases = [
        Case {
            method: "HEAD",
            target: "/b/dir/k.txt",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "HeadObject", "s3:GetObject"),
            resources: &["arn:aws:s3:::b/dir/k.txt"],
        },
        Case {
            method: "GET",
            target: "/b/k?acl",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "GetObjectAcl", "s3:GetObjectAcl"),
            resources: &["arn:aws:s3:::b/k"],
        },
        Case {
            method: "GET",
            target: "/b/k?acl&versionId=7",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "GetObjectAcl", "s3:GetObjectVersionAcl"),
            resources: &["arn:aws:s3:::b/k"],
        },
        Case {
            method: "HEAD",
            target: "/b",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "HeadBucket", "s3:ListBucket"),
            resources: &["arn:aws:s3:::b"],
        },
        Case {
            method: "GET",
            target: "/",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "",
            expect: ("s3", "ListBuckets", "s3:ListAllMyBuckets"),
            resources: &[],
        },
        // SES: endpoint prefix `email`, IAM prefix `ses` (query API v1 and REST API v2).
        Case {
            method: "POST",
            target: "/",
            host: "email.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ses"),
            headers: &[FORM],
            body: "Action=SendEmail&Version=2010-12-01&Source=a%40example.com",
            expect: ("ses", "SendEmail", "ses:SendEmail"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/v2/email/outbound-emails",
            host: "email.eu-west-1.amazonaws.com",
            scope: Some("eu-west-1/ses"),
            headers: &[("Content-Type", "application/json")],
            body: r#"{"FromEmailAddress":"a@example.com"}"#,
            expect: ("sesv2", "SendEmail", "ses:SendEmail"),
            resources: &[],
        },
        // CloudWatch: endpoint prefix and signing name `monitoring`, IAM prefix `cloudwatch`.
        Case {
            method: "POST",
            target: "/",
            host: "monitoring.us-east-1.amazonaws.com",
            scope: Some("us-east-1/monitoring"),
            headers: &[
                (
                    "X-Amz-Target",
                    "GraniteServiceVersion20100801.DescribeAlarms",
                ),
                ("Content-Type", "application/x-amz-json-1.0"),
            ],
            body: r#"{"AlarmNames":["cpu-high"]}"#,
            expect: ("cloudwatch", "DescribeAlarms", "cloudwatch:DescribeAlarms"),
            resources: &["arn:aws:cloudwatch:us-east-1:123456789012:alarm:cpu-high"],
        },
        Case {
            method: "POST",
            target: "/2015-03-31/functions/fn/invocations",
            host: "lambda.us-east-1.amazonaws.com",
            scope: Some("us-east-1/lambda"),
            headers: &[("X-Amz-Invocation-Type", "Event")],
            body: "{}",
            expect: ("lambda", "Invoke", "lambda:InvokeFunction"),
            resources: &["arn:aws:lambda:us-east-1:123456789012:function:fn"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sqs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sqs"),
            headers: &[("X-Amz-Target", "AmazonSQS.SendMessageBatch")],
            body: r#"{"QueueUrl":"https://sqs.us-east-1.amazonaws.com/123456789012/jobs","Entries":[{"Id":"1","MessageBody":"x"}]}"#,
            expect: ("sqs", "SendMessageBatch", "sqs:SendMessage"),
            resources: &["arn:aws:sqs:us-east-1:123456789012:jobs"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sqs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sqs"),
            headers: &[("X-Amz-Target", "AmazonSQS.DeleteMessageBatch")],
            body: r#"{"QueueUrl":"https://sqs.us-east-1.amazonaws.com/123456789012/jobs","Entries":[]}"#,
            expect: ("sqs", "DeleteMessageBatch", "sqs:DeleteMessage"),
            resources: &["arn:aws:sqs:us-east-1:123456789012:jobs"],
        },
        Case {
            method: "POST",
            target: "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            host: "bedrock-runtime.us-west-2.amazonaws.com",
            scope: Some("us-west-2/bedrock"),
            headers: &[("Content-Type", "application/json")],
            body: r#"{"messages":[]}"#,
            expect: ("bedrock-runtime", "Converse", "bedrock:InvokeModel"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/model/m/converse-stream",
            host: "bedrock-runtime.us-west-2.amazonaws.com",
            scope: Some("us-west-2/bedrock"),
            headers: &[],
            body: "{}",
            expect: (
                "bedrock-runtime",
                "ConverseStream",
                "bedrock:InvokeModelWithResponseStream",
            ),
            resources: &[],
        },
        Case {
            method: "POST",
            // The SDK's endpoint is the API's stage URL: the path starts with the stage.
            target: "/prod/@connections/L0SM9cOFvHcCIhw%3D",
            host: "abcdef1234.execute-api.us-east-1.amazonaws.com",
            scope: Some("us-east-1/execute-api"),
            headers: &[],
            body: "hello",
            expect: (
                "apigatewaymanagementapi",
                "PostToConnection",
                "execute-api:ManageConnections",
            ),
            resources: &[],
        },
        Case {
            method: "GET",
            target: "/restapis",
            host: "apigateway.us-east-1.amazonaws.com",
            scope: Some("us-east-1/apigateway"),
            headers: &[],
            body: "",
            expect: ("apigateway", "GetRestApis", "apigateway:GET"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/",
            host: "streams.dynamodb.us-east-1.amazonaws.com",
            scope: Some("us-east-1/dynamodb"),
            headers: &[("X-Amz-Target", "DynamoDBStreams_20120810.GetRecords")],
            body: r#"{"ShardIterator":"x"}"#,
            expect: ("dynamodbstreams", "GetRecords", "dynamodb:GetRecords"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/",
            host: "states.us-east-1.amazonaws.com",
            scope: Some("us-east-1/states"),
            headers: &[("X-Amz-Target", "AWSStepFunctions.ListStateMachines")],
            body: "{}",
            expect: (
                "stepfunctions",
                "ListStateMachines",
                "states:ListStateMachines",
            ),
            resources: &[],
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// ARNs of the resource types the agent must name, exactly.
#[test]
fn resource_arns() {
    let cases = [
        Case {
            method: "POST",
            target: "/",
            host: "ecs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ecs"),
            headers: &[(
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.CreateCluster",
            )],
            body: r#"{"clusterName":"prod"}"#,
            expect: ("ecs", "CreateCluster", "ecs:CreateCluster"),
            resources: &["arn:aws:ecs:us-east-1:123456789012:cluster/prod"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ecs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ecs"),
            headers: &[(
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.DescribeClusters",
            )],
            body: r#"{"clusters":["prod","arn:aws:ecs:us-east-1:111122223333:cluster/other"]}"#,
            expect: ("ecs", "DescribeClusters", "ecs:DescribeClusters"),
            resources: &[
                "arn:aws:ecs:us-east-1:123456789012:cluster/prod",
                "arn:aws:ecs:us-east-1:111122223333:cluster/other",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ecs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ecs"),
            headers: &[(
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.CreateService",
            )],
            body: r#"{"cluster":"prod","serviceName":"web","taskDefinition":"web:3"}"#,
            expect: ("ecs", "CreateService", "ecs:CreateService"),
            resources: &[
                "arn:aws:ecs:us-east-1:123456789012:service/prod/web",
                "arn:aws:ecs:us-east-1:123456789012:task-definition/web:3",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ecs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ecs"),
            headers: &[(
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.UpdateService",
            )],
            body: r#"{"cluster":"prod","service":"web","desiredCount":2}"#,
            expect: ("ecs", "UpdateService", "ecs:UpdateService"),
            resources: &["arn:aws:ecs:us-east-1:123456789012:service/prod/web"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "kms.eu-west-1.amazonaws.com",
            scope: Some("eu-west-1/kms"),
            headers: &[("X-Amz-Target", "TrentService.Encrypt")],
            body: r#"{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"eA=="}"#,
            expect: ("kms", "Encrypt", "kms:Encrypt"),
            resources: &[
                "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "kms.eu-west-1.amazonaws.com",
            scope: Some("eu-west-1/kms"),
            headers: &[("X-Amz-Target", "TrentService.CreateAlias")],
            body: r#"{"AliasName":"alias/app","TargetKeyId":"1234abcd-12ab-34cd-56ef-1234567890ab"}"#,
            expect: ("kms", "CreateAlias", "kms:CreateAlias"),
            resources: &[
                "arn:aws:kms:eu-west-1:123456789012:alias/app",
                "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "kms.eu-west-1.amazonaws.com",
            scope: Some("eu-west-1/kms"),
            headers: &[("X-Amz-Target", "TrentService.Decrypt")],
            body: r#"{"KeyId":"arn:aws:kms:eu-west-1:111122223333:key/k1","CiphertextBlob":"AA=="}"#,
            expect: ("kms", "Decrypt", "kms:Decrypt"),
            resources: &["arn:aws:kms:eu-west-1:111122223333:key/k1"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ec2.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ec2"),
            headers: &[FORM],
            body: "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0abc1234def567890",
            expect: ("ec2", "DescribeInstances", "ec2:DescribeInstances"),
            resources: &["arn:aws:ec2:us-east-1:123456789012:instance/i-0abc1234def567890"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ec2.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ec2"),
            headers: &[FORM],
            body: "Action=StopInstances&Version=2016-11-15&InstanceId.1=i-0abc1234def567890",
            expect: ("ec2", "StopInstances", "ec2:StopInstances"),
            resources: &["arn:aws:ec2:us-east-1:123456789012:instance/i-0abc1234def567890"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "secretsmanager.us-east-1.amazonaws.com",
            scope: Some("us-east-1/secretsmanager"),
            headers: &[("X-Amz-Target", "secretsmanager.CreateSecret")],
            body: r#"{"Name":"prod/db","SecretString":"s"}"#,
            expect: (
                "secretsmanager",
                "CreateSecret",
                "secretsmanager:CreateSecret",
            ),
            resources: &["arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sns.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sns"),
            headers: &[FORM],
            body: "Action=Publish&Version=2010-03-31&TopicArn=arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3Aalerts&Message=x",
            expect: ("sns", "Publish", "sns:Publish"),
            resources: &["arn:aws:sns:us-east-1:123456789012:alerts"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=AttachRolePolicy&Version=2010-05-08&RoleName=app&PolicyArn=arn%3Aaws%3Aiam%3A%3Aaws%3Apolicy%2FReadOnlyAccess",
            expect: ("iam", "AttachRolePolicy", "iam:AttachRolePolicy"),
            resources: &[
                "arn:aws:iam::123456789012:role/app",
                "arn:aws:iam::aws:policy/ReadOnlyAccess",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ecr.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ecr"),
            headers: &[(
                "X-Amz-Target",
                "AmazonEC2ContainerRegistry_V20150921.BatchGetImage",
            )],
            body: r#"{"repositoryName":"team/app","imageIds":[{"imageTag":"v1"}]}"#,
            expect: ("ecr", "BatchGetImage", "ecr:BatchGetImage"),
            resources: &["arn:aws:ecr:us-east-1:123456789012:repository/team/app"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "logs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/logs"),
            headers: &[("X-Amz-Target", "Logs_20140328.PutLogEvents")],
            body: r#"{"logGroupName":"/app/web","logStreamName":"s","logEvents":[]}"#,
            expect: ("logs", "PutLogEvents", "logs:PutLogEvents"),
            resources: &["arn:aws:logs:us-east-1:123456789012:log-group:/app/web"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "kinesis.us-east-1.amazonaws.com",
            scope: Some("us-east-1/kinesis"),
            headers: &[("X-Amz-Target", "Kinesis_20131202.PutRecord")],
            body: r#"{"StreamName":"clicks","Data":"eA==","PartitionKey":"k"}"#,
            expect: ("kinesis", "PutRecord", "kinesis:PutRecord"),
            resources: &["arn:aws:kinesis:us-east-1:123456789012:stream/clicks"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "cloudformation.us-east-1.amazonaws.com",
            scope: Some("us-east-1/cloudformation"),
            headers: &[FORM],
            body: "Action=DeleteStack&Version=2010-05-15&StackName=web",
            expect: (
                "cloudformation",
                "DeleteStack",
                "cloudformation:DeleteStack",
            ),
            resources: &["arn:aws:cloudformation:us-east-1:123456789012:stack/web/*"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "rds.us-east-1.amazonaws.com",
            scope: Some("us-east-1/rds"),
            headers: &[FORM],
            body: "Action=DeleteDBInstance&Version=2014-10-31&DBInstanceIdentifier=orders&SkipFinalSnapshot=true",
            expect: ("rds", "DeleteDBInstance", "rds:DeleteDBInstance"),
            resources: &["arn:aws:rds:us-east-1:123456789012:db:orders"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "states.us-east-1.amazonaws.com",
            scope: Some("us-east-1/states"),
            headers: &[("X-Amz-Target", "AWSStepFunctions.CreateStateMachine")],
            body: r#"{"name":"orders","definition":"{}","roleArn":"arn:aws:iam::123456789012:role/sfn"}"#,
            expect: (
                "stepfunctions",
                "CreateStateMachine",
                "states:CreateStateMachine",
            ),
            resources: &[
                "arn:aws:states:us-east-1:123456789012:stateMachine:orders",
                "arn:aws:iam::123456789012:role/sfn",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.CreateEventBus")],
            body: r#"{"Name":"orders"}"#,
            expect: ("events", "CreateEventBus", "events:CreateEventBus"),
            resources: &["arn:aws:events:us-east-1:123456789012:event-bus/orders"],
        },
        Case {
            method: "GET",
            target: "/clusters/prod",
            host: "eks.us-east-1.amazonaws.com",
            scope: Some("us-east-1/eks"),
            headers: &[],
            body: "",
            expect: ("eks", "DescribeCluster", "eks:DescribeCluster"),
            resources: &["arn:aws:eks:us-east-1:123456789012:cluster/prod"],
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Generic member names mean different resources in different operations: each rule is
/// limited to the operations where it names that resource.
#[test]
fn ambiguous_members_name_the_right_resource() {
    let cases = [
        // IAM: PolicyName is an inline policy of the role/user; the resource is the role/user.
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=PutRolePolicy&Version=2010-05-08&RoleName=app&PolicyName=inline&PolicyDocument=%7B%7D",
            expect: ("iam", "PutRolePolicy", "iam:PutRolePolicy"),
            resources: &["arn:aws:iam::123456789012:role/app"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=GetUserPolicy&Version=2010-05-08&UserName=bob&PolicyName=inline",
            expect: ("iam", "GetUserPolicy", "iam:GetUserPolicy"),
            resources: &["arn:aws:iam::123456789012:user/bob"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=CreatePolicy&Version=2010-05-08&PolicyName=read&Path=%2Fteam%2F&PolicyDocument=%7B%7D",
            expect: ("iam", "CreatePolicy", "iam:CreatePolicy"),
            resources: &["arn:aws:iam::123456789012:policy/team/read"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=CreatePolicy&Version=2010-05-08&PolicyName=read&PolicyDocument=%7B%7D",
            expect: ("iam", "CreatePolicy", "iam:CreatePolicy"),
            resources: &["arn:aws:iam::123456789012:policy/read"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=CreateRole&Version=2010-05-08&RoleName=app&Path=%2Fsvc%2F&AssumeRolePolicyDocument=%7B%7D",
            expect: ("iam", "CreateRole", "iam:CreateRole"),
            resources: &["arn:aws:iam::123456789012:role/svc/app"],
        },
        // SSM: `Name` is a parameter, a document, or the label of a maintenance window.
        Case {
            method: "POST",
            target: "/",
            host: "ssm.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ssm"),
            headers: &[("X-Amz-Target", "AmazonSSM.GetParameter")],
            body: r#"{"Name":"/app/db/password","WithDecryption":true}"#,
            expect: ("ssm", "GetParameter", "ssm:GetParameter"),
            resources: &["arn:aws:ssm:us-east-1:123456789012:parameter/app/db/password"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ssm.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ssm"),
            headers: &[("X-Amz-Target", "AmazonSSM.GetDocument")],
            body: r#"{"Name":"deploy-app"}"#,
            expect: ("ssm", "GetDocument", "ssm:GetDocument"),
            resources: &["arn:aws:ssm:us-east-1:123456789012:document/deploy-app"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ssm.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ssm"),
            headers: &[("X-Amz-Target", "AmazonSSM.SendCommand")],
            body: r#"{"DocumentName":"AWS-RunShellScript","InstanceIds":["i-1","i-2"],"Parameters":{"commands":["id"]}}"#,
            expect: ("ssm", "SendCommand", "ssm:SendCommand"),
            resources: &[
                "arn:aws:ssm:us-east-1::document/AWS-RunShellScript",
                "arn:aws:ec2:us-east-1:123456789012:instance/i-1",
                "arn:aws:ec2:us-east-1:123456789012:instance/i-2",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ssm.us-east-1.amazonaws.com",
            scope: Some("us-east-1/ssm"),
            headers: &[("X-Amz-Target", "AmazonSSM.CreateMaintenanceWindow")],
            body: r#"{"Name":"nightly","Schedule":"cron(0 2 * * ? *)","Duration":2,"Cutoff":1,"AllowUnassociatedTargets":false}"#,
            expect: (
                "ssm",
                "CreateMaintenanceWindow",
                "ssm:CreateMaintenanceWindow",
            ),
            resources: &[],
        },
        // EventBridge: `Name` is a rule, a connection, an API destination...
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.PutRule")],
            body: r#"{"Name":"nightly","ScheduleExpression":"rate(1 day)"}"#,
            expect: ("events", "PutRule", "events:PutRule"),
            resources: &["arn:aws:events:us-east-1:123456789012:rule/nightly"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.PutRule")],
            body: r#"{"Name":"nightly","EventBusName":"default"}"#,
            expect: ("events", "PutRule", "events:PutRule"),
            resources: &["arn:aws:events:us-east-1:123456789012:rule/nightly"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.PutRule")],
            body: r#"{"Name":"paid","EventBusName":"orders"}"#,
            expect: ("events", "PutRule", "events:PutRule"),
            resources: &["arn:aws:events:us-east-1:123456789012:rule/orders/paid"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.PutTargets")],
            body: r#"{"Rule":"paid","EventBusName":"arn:aws:events:us-east-1:123456789012:event-bus/orders","Targets":[]}"#,
            expect: ("events", "PutTargets", "events:PutTargets"),
            // The bus ARN is a parameter whose value is an ARN: named as well.
            resources: &[
                "arn:aws:events:us-east-1:123456789012:rule/orders/paid",
                "arn:aws:events:us-east-1:123456789012:event-bus/orders",
            ],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.CreateConnection")],
            body: r#"{"Name":"github","AuthorizationType":"API_KEY"}"#,
            expect: ("events", "CreateConnection", "events:CreateConnection"),
            resources: &["arn:aws:events:us-east-1:123456789012:connection/github"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "events.us-east-1.amazonaws.com",
            scope: Some("us-east-1/events"),
            headers: &[("X-Amz-Target", "AWSEvents.CreateArchive")],
            body: r#"{"ArchiveName":"all","EventSourceArn":"arn:aws:events:us-east-1:123456789012:event-bus/orders"}"#,
            expect: ("events", "CreateArchive", "events:CreateArchive"),
            resources: &[
                "arn:aws:events:us-east-1:123456789012:archive/all",
                "arn:aws:events:us-east-1:123456789012:event-bus/orders",
            ],
        },
        // Step Functions: `name` is an activity's, or (StartExecution) an execution's.
        Case {
            method: "POST",
            target: "/",
            host: "states.us-east-1.amazonaws.com",
            scope: Some("us-east-1/states"),
            headers: &[("X-Amz-Target", "AWSStepFunctions.CreateActivity")],
            body: r#"{"name":"worker"}"#,
            expect: ("stepfunctions", "CreateActivity", "states:CreateActivity"),
            resources: &["arn:aws:states:us-east-1:123456789012:activity:worker"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "states.us-east-1.amazonaws.com",
            scope: Some("us-east-1/states"),
            headers: &[("X-Amz-Target", "AWSStepFunctions.StartExecution")],
            body: r#"{"stateMachineArn":"arn:aws:states:us-east-1:123456789012:stateMachine:orders","name":"run-1"}"#,
            expect: ("stepfunctions", "StartExecution", "states:StartExecution"),
            resources: &["arn:aws:states:us-east-1:123456789012:stateMachine:orders"],
        },
        // SNS: `Name` is a topic only in CreateTopic.
        Case {
            method: "POST",
            target: "/",
            host: "sns.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sns"),
            headers: &[FORM],
            body: "Action=CreateTopic&Version=2010-03-31&Name=alerts",
            expect: ("sns", "CreateTopic", "sns:CreateTopic"),
            resources: &["arn:aws:sns:us-east-1:123456789012:alerts"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sns.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sns"),
            headers: &[FORM],
            body: "Action=CreatePlatformApplication&Version=2010-03-31&Name=app&Platform=GCM",
            expect: (
                "sns",
                "CreatePlatformApplication",
                "sns:CreatePlatformApplication",
            ),
            resources: &[],
        },
        // Route 53: `Id` is a hosted zone, a change...
        Case {
            method: "GET",
            target: "/2013-04-01/hostedzone/Z123",
            host: "route53.amazonaws.com",
            scope: Some("us-east-1/route53"),
            headers: &[],
            body: "",
            expect: ("route53", "GetHostedZone", "route53:GetHostedZone"),
            resources: &["arn:aws:route53:::hostedzone/Z123"],
        },
        Case {
            method: "GET",
            target: "/2013-04-01/change/C456",
            host: "route53.amazonaws.com",
            scope: Some("us-east-1/route53"),
            headers: &[],
            body: "",
            expect: ("route53", "GetChange", "route53:GetChange"),
            resources: &["arn:aws:route53:::change/C456"],
        },
        // EKS: `name` is a cluster's, except for an EKS Anywhere subscription.
        Case {
            method: "POST",
            target: "/eks-anywhere-subscriptions",
            host: "eks.us-east-1.amazonaws.com",
            scope: Some("us-east-1/eks"),
            headers: &[],
            body: r#"{"name":"sub","term":{"duration":12,"unit":"MONTHS"}}"#,
            expect: (
                "eks",
                "CreateEksAnywhereSubscription",
                "eks:CreateEksAnywhereSubscription",
            ),
            resources: &[],
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// FIPS and dual-stack endpoints of services other than S3: the host names the service and
/// region when nothing else does.
#[test]
fn fips_and_dualstack_hosts() {
    let cases = [
        Case {
            method: "POST",
            target: "/",
            host: "dynamodb-fips.us-east-1.amazonaws.com",
            scope: None,
            headers: &[("X-Amz-Target", "DynamoDB_20120810.GetItem")],
            body: r#"{"TableName":"users","Key":{}}"#,
            expect: ("dynamodb", "GetItem", "dynamodb:GetItem"),
            resources: &["arn:aws:dynamodb:us-east-1:123456789012:table/users"],
        },
        Case {
            method: "GET",
            target: "/?Action=GetCallerIdentity&Version=2011-06-15",
            host: "sts-fips.us-east-2.amazonaws.com",
            scope: None,
            headers: &[],
            body: "",
            expect: ("sts", "GetCallerIdentity", "sts:GetCallerIdentity"),
            resources: &[],
        },
        Case {
            method: "POST",
            target: "/2015-03-31/functions/fn/invocations",
            host: "lambda-fips.us-gov-west-1.amazonaws.com",
            scope: None,
            headers: &[],
            body: "{}",
            expect: ("lambda", "Invoke", "lambda:InvokeFunction"),
            resources: &["arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:fn"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "ec2.dualstack.eu-west-1.amazonaws.com",
            scope: None,
            headers: &[FORM],
            body: "Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-9",
            expect: ("ec2", "TerminateInstances", "ec2:TerminateInstances"),
            resources: &["arn:aws:ec2:eu-west-1:123456789012:instance/i-9"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "kms-fips.ca-central-1.api.aws",
            scope: None,
            headers: &[("X-Amz-Target", "TrentService.Sign")],
            body: r#"{"KeyId":"k-1","Message":"eA==","SigningAlgorithm":"ECDSA_SHA_256"}"#,
            expect: ("kms", "Sign", "kms:Sign"),
            resources: &["arn:aws:kms:ca-central-1:123456789012:key/k-1"],
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Without a known principal the account in ARNs is a wildcard; an account carried in the
/// request itself (a queue URL, an ARN) is kept.
#[test]
fn unknown_account_is_a_wildcard() {
    let cases = [
        Case {
            method: "POST",
            target: "/",
            host: "dynamodb.us-east-1.amazonaws.com",
            scope: Some("us-east-1/dynamodb"),
            headers: &[("X-Amz-Target", "DynamoDB_20120810.PutItem")],
            body: r#"{"TableName":"users","Item":{}}"#,
            expect: ("dynamodb", "PutItem", "dynamodb:PutItem"),
            resources: &["arn:aws:dynamodb:us-east-1:*:table/users"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "iam.amazonaws.com",
            scope: Some("us-east-1/iam"),
            headers: &[FORM],
            body: "Action=CreateUser&Version=2010-05-08&UserName=bob",
            expect: ("iam", "CreateUser", "iam:CreateUser"),
            resources: &["arn:aws:iam::*:user/bob"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sqs.us-east-1.amazonaws.com",
            scope: Some("us-east-1/sqs"),
            headers: &[("X-Amz-Target", "AmazonSQS.SendMessage")],
            body: r#"{"QueueUrl":"https://sqs.us-east-1.amazonaws.com/111122223333/jobs","MessageBody":"x"}"#,
            expect: ("sqs", "SendMessage", "sqs:SendMessage"),
            resources: &["arn:aws:sqs:us-east-1:111122223333:jobs"],
        },
        Case {
            method: "POST",
            target: "/",
            host: "sts.amazonaws.com",
            scope: Some("us-east-1/sts"),
            headers: &[FORM],
            body: "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fdeploy&RoleSessionName=s",
            expect: ("sts", "AssumeRole", "sts:AssumeRole"),
            resources: &["arn:aws:iam::111122223333:role/deploy"],
        },
        Case {
            method: "PUT",
            target: "/b/k",
            host: "s3.us-east-1.amazonaws.com",
            scope: Some("us-east-1/s3"),
            headers: &[],
            body: "x",
            expect: ("s3", "PutObject", "s3:PutObject"),
            resources: &["arn:aws:s3:::b/k"],
        },
    ];
    for c in &cases {
        run_as(c, None);
    }
}

/// A presigned URL carries its SigV4 scope in the query string: the region and service come
/// from it, and its X-Amz-* parameters are not request members.
#[test]
fn presigned_url_region_and_resources() {
    let target = "/reports/2026/q1.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261125%2Feu-central-1%2Fs3%2Faws4_request&X-Amz-Date=20261125T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0";
    let headers: Vec<(&str, &[u8])> = vec![("Host", b"127.0.0.1:4566")];
    let req = HttpRequest {
        method: "GET",
        target,
        headers: &headers,
        body: b"",
    };
    let cred = sigv4::parse(&req).expect("presigned scope");
    let call = classify(&req, Some(&cred), None, Some(ACCOUNT)).expect("classified");
    assert_eq!(
        (call.service.as_str(), call.operation.as_str()),
        ("s3", "GetObject")
    );
    assert_eq!(call.iam_action, "s3:GetObject");
    assert_eq!(call.region.as_deref(), Some("eu-central-1"));
    assert_eq!(call.resources, ["arn:aws:s3:::reports/2026/q1.csv"]);
}
