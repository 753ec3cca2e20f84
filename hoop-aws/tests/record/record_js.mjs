// Records the requests the AWS SDK for JavaScript v3 builds, against moto.
//
// Setup (outside the repo): mkdir /tmp/jsrec && cd /tmp/jsrec && npm init -y &&
//   npm install @aws-sdk/client-s3 @aws-sdk/client-dynamodb @aws-sdk/client-sts \
//     @aws-sdk/client-sqs @aws-sdk/client-ssm @aws-sdk/client-secrets-manager \
//     @aws-sdk/client-kms @aws-sdk/client-sns @aws-sdk/client-iam @aws-sdk/client-ec2 \
//     @aws-sdk/client-lambda @aws-sdk/client-cloudwatch-logs @aws-sdk/client-kinesis \
//     @aws-sdk/client-cloudwatch @aws-sdk/s3-request-presigner @smithy/node-http-handler
// Run:   NODE_PATH=/tmp/jsrec/node_modules node hoop-aws/tests/record/record_js.mjs [PORT]
// Writes hoop-aws/tests/fixtures/js-v3.jsonl.
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";

const require = createRequire(join(process.env.NODE_PATH || "/tmp/jsrec/node_modules", "x"));
const here = dirname(fileURLToPath(import.meta.url));
const port = Number(process.argv[2] || 47011);
const endpoint = `http://127.0.0.1:${port}`;
const credentials = {
  accessKeyId: "AKIAIOSFODNN7EXAMPLE",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
};

const rows = [];
let current = null;

function b64(body) {
  if (body == null) return "";
  if (typeof body === "string") return Buffer.from(body).toString("base64");
  if (body instanceof Uint8Array) return Buffer.from(body).toString("base64");
  return ""; // streams: not captured
}

function scrubHeaders(h) {
  const out = [];
  for (const [k, v] of Object.entries(h)) {
    const lk = k.toLowerCase();
    if (lk === "x-amz-security-token") continue;
    out.push([k, lk === "authorization" ? String(v).replace(/Signature=[0-9a-f]+/i, "Signature=REDACTED") : String(v)]);
  }
  return out;
}

function queryString(q) {
  const parts = [];
  for (const [k, v] of Object.entries(q || {})) {
    const enc = (s) => encodeURIComponent(s);
    if (v === null || v === undefined) parts.push(enc(k));
    else if (Array.isArray(v)) for (const x of v) parts.push(`${enc(k)}=${enc(x)}`);
    else parts.push(`${enc(k)}=${enc(v)}`);
  }
  return parts.join("&");
}

function recordingHandler(inner) {
  return {
    metadata: inner.metadata,
    destroy: () => inner.destroy?.(),
    updateHttpClientConfig: (...a) => inner.updateHttpClientConfig?.(...a),
    httpHandlerConfigs: () => inner.httpHandlerConfigs?.() ?? {},
    handle: async (req, opts) => {
      const qs = queryString(req.query);
      const headers = { ...req.headers };
      if (!Object.keys(headers).some((k) => k.toLowerCase() === "host")) {
        headers.host = req.port ? `${req.hostname}:${req.port}` : req.hostname;
      }
      rows.push({
        sdk: "js-v3",
        method: req.method,
        target: (req.path || "/") + (qs ? `?${qs}` : ""),
        headers: scrubHeaders(headers),
        body_b64: b64(req.body),
        service: current[0],
        operation: current[1],
      });
      return inner.handle(req, opts);
    },
  };
}

function client(pkg, cls, service, extra = {}) {
  const mod = require(pkg);
  const { NodeHttpHandler } = require("@smithy/node-http-handler");
  const c = new mod[cls]({
    region: "us-east-1",
    endpoint,
    credentials,
    requestHandler: recordingHandler(new NodeHttpHandler()),
    maxAttempts: 1,
    ...extra,
  });
  return { mod, c, service };
}

async function call({ mod, c, service }, command, input = {}) {
  current = [service, command];
  try {
    return await c.send(new mod[`${command}Command`](input));
  } catch (e) {
    console.error(`  (${service}.${command}: ${e.name})`);
    return null;
  }
}

function waitPort() {
  return new Promise((resolve) => {
    const tryOnce = (n) => {
      const s = net.connect(port, "127.0.0.1", () => { s.end(); resolve(); });
      s.on("error", () => (n > 0 ? setTimeout(() => tryOnce(n - 1), 100) : resolve()));
    };
    tryOnce(100);
  });
}

const moto = spawn("moto_server", ["-H", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
try {
  await waitPort();
  const s3 = client("@aws-sdk/client-s3", "S3Client", "s3", { forcePathStyle: true });
  await call(s3, "CreateBucket", { Bucket: "js-bucket" });
  await call(s3, "PutObject", { Bucket: "js-bucket", Key: "d/o.txt", Body: "hello" });
  await call(s3, "GetObject", { Bucket: "js-bucket", Key: "d/o.txt" });
  await call(s3, "HeadObject", { Bucket: "js-bucket", Key: "d/o.txt" });
  await call(s3, "ListObjectsV2", { Bucket: "js-bucket" });
  await call(s3, "ListObjects", { Bucket: "js-bucket" });
  await call(s3, "ListBuckets");
  await call(s3, "GetBucketTagging", { Bucket: "js-bucket" });
  await call(s3, "PutObjectTagging", { Bucket: "js-bucket", Key: "d/o.txt", Tagging: { TagSet: [] } });
  await call(s3, "CopyObject", { Bucket: "js-bucket", Key: "c.txt", CopySource: "js-bucket/d/o.txt" });
  const mpu = await call(s3, "CreateMultipartUpload", { Bucket: "js-bucket", Key: "m.bin" });
  if (mpu) {
    const part = await call(s3, "UploadPart", { Bucket: "js-bucket", Key: "m.bin", UploadId: mpu.UploadId, PartNumber: 1, Body: "x" });
    await call(s3, "ListParts", { Bucket: "js-bucket", Key: "m.bin", UploadId: mpu.UploadId });
    await call(s3, "CompleteMultipartUpload", {
      Bucket: "js-bucket", Key: "m.bin", UploadId: mpu.UploadId,
      MultipartUpload: { Parts: [{ ETag: part?.ETag, PartNumber: 1 }] },
    });
  }
  await call(s3, "DeleteObjects", { Bucket: "js-bucket", Delete: { Objects: [{ Key: "c.txt" }] } });
  await call(s3, "DeleteObject", { Bucket: "js-bucket", Key: "d/o.txt" });
  {
    const { getSignedUrl } = require("@aws-sdk/s3-request-presigner");
    const { GetObjectCommand } = s3.mod;
    const url = new URL(await getSignedUrl(s3.c, new GetObjectCommand({ Bucket: "js-bucket", Key: "m.bin" })));
    rows.push({
      sdk: "js-v3", method: "GET", target: url.pathname + url.search.replace(/(X-Amz-Signature=)[0-9a-f]+/, "$1REDACTED"),
      headers: [["host", url.host]], body_b64: "", service: "s3", operation: "GetObject", note: "presigned",
    });
  }
  // Virtual-hosted style on the real S3 host name (the handler records, then we abort).
  const vh = client("@aws-sdk/client-s3", "S3Client", "s3", { endpoint: undefined, region: "eu-west-1" });
  vh.c.config.requestHandler = {
    handle: async (req, opts) => { await recordingHandler({ handle: async () => { throw new Error("not sent"); } }).handle(req, opts); },
  };
  await call(vh, "GetObject", { Bucket: "js-vh-bucket", Key: "k/1.txt" });
  await call(vh, "ListObjectsV2", { Bucket: "js-vh-bucket" });

  const ddb = client("@aws-sdk/client-dynamodb", "DynamoDBClient", "dynamodb");
  await call(ddb, "CreateTable", {
    TableName: "js-table", KeySchema: [{ AttributeName: "id", KeyType: "HASH" }],
    AttributeDefinitions: [{ AttributeName: "id", AttributeType: "S" }], BillingMode: "PAY_PER_REQUEST",
  });
  await call(ddb, "PutItem", { TableName: "js-table", Item: { id: { S: "1" } } });
  await call(ddb, "GetItem", { TableName: "js-table", Key: { id: { S: "1" } } });
  await call(ddb, "Query", { TableName: "js-table", KeyConditionExpression: "id = :v", ExpressionAttributeValues: { ":v": { S: "1" } } });
  await call(ddb, "BatchWriteItem", { RequestItems: { "js-table": [{ PutRequest: { Item: { id: { S: "2" } } } }] } });
  await call(ddb, "DeleteTable", { TableName: "js-table" });

  const sts = client("@aws-sdk/client-sts", "STSClient", "sts");
  await call(sts, "GetCallerIdentity");
  await call(sts, "AssumeRole", { RoleArn: "arn:aws:iam::123456789012:role/js-role", RoleSessionName: "js" });

  const sqs = client("@aws-sdk/client-sqs", "SQSClient", "sqs");
  const q = await call(sqs, "CreateQueue", { QueueName: "js-queue" });
  const qurl = q?.QueueUrl ?? `${endpoint}/123456789012/js-queue`;
  await call(sqs, "SendMessage", { QueueUrl: qurl, MessageBody: "m" });
  await call(sqs, "ReceiveMessage", { QueueUrl: qurl });
  await call(sqs, "DeleteQueue", { QueueUrl: qurl });

  const ssm = client("@aws-sdk/client-ssm", "SSMClient", "ssm");
  await call(ssm, "PutParameter", { Name: "/js/p", Value: "v", Type: "String" });
  await call(ssm, "GetParameter", { Name: "/js/p" });
  await call(ssm, "GetParametersByPath", { Path: "/js" });

  const sm = client("@aws-sdk/client-secrets-manager", "SecretsManagerClient", "secretsmanager");
  await call(sm, "CreateSecret", { Name: "js/secret", SecretString: "x" });
  await call(sm, "GetSecretValue", { SecretId: "js/secret" });

  const kms = client("@aws-sdk/client-kms", "KMSClient", "kms");
  const key = await call(kms, "CreateKey", {});
  await call(kms, "Encrypt", { KeyId: key?.KeyMetadata?.KeyId ?? "alias/js", Plaintext: Buffer.from("x") });
  await call(kms, "ListAliases");

  const sns = client("@aws-sdk/client-sns", "SNSClient", "sns");
  const t = await call(sns, "CreateTopic", { Name: "js-topic" });
  await call(sns, "Publish", { TopicArn: t?.TopicArn ?? "arn:aws:sns:us-east-1:123456789012:js-topic", Message: "m" });

  const iam = client("@aws-sdk/client-iam", "IAMClient", "iam");
  await call(iam, "CreateRole", { RoleName: "js-role", AssumeRolePolicyDocument: "{}" });
  await call(iam, "ListAttachedRolePolicies", { RoleName: "js-role" });
  await call(iam, "ListUsers");

  const ec2 = client("@aws-sdk/client-ec2", "EC2Client", "ec2");
  await call(ec2, "DescribeInstances", { InstanceIds: ["i-0123456789abcdef0"] });
  await call(ec2, "DescribeVpcs");
  await call(ec2, "DescribeImages", { Owners: ["self"] });

  const lambda = client("@aws-sdk/client-lambda", "LambdaClient", "lambda");
  await call(lambda, "ListFunctions");
  await call(lambda, "GetFunction", { FunctionName: "js-fn" });
  await call(lambda, "Invoke", { FunctionName: "js-fn", Payload: Buffer.from("{}") });

  const logs = client("@aws-sdk/client-cloudwatch-logs", "CloudWatchLogsClient", "logs");
  await call(logs, "CreateLogGroup", { logGroupName: "/js/group" });
  await call(logs, "DescribeLogGroups", {});

  const kin = client("@aws-sdk/client-kinesis", "KinesisClient", "kinesis");
  await call(kin, "ListStreams", {});
  await call(kin, "DescribeStreamSummary", { StreamName: "js-stream" });

  const cw = client("@aws-sdk/client-cloudwatch", "CloudWatchClient", "cloudwatch");
  await call(cw, "PutMetricData", { Namespace: "js", MetricData: [{ MetricName: "m", Value: 1 }] });
  await call(cw, "ListMetrics", {});
} finally {
  moto.kill();
}
const out = join(here, "..", "fixtures", "js-v3.jsonl");
writeFileSync(out, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
console.error(`${rows.length} requests -> ${out}`);
