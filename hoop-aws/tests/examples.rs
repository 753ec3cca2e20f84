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

fn run(c: &Case<'_>) {
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
    let call = classify(&req, cred.as_ref(), None, Some("123456789012"))
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
