// AWS SDK for JavaScript v3 client for hoop's enforcement tests: runs the steps named on the
// command line and prints one JSON line per step: {"step", "ok", "error", "pid"}. Retries are
// off (maxAttempts 1) so a blocked call fails once.
//
// Node writes a small request's head and body in one TLS write, unlike urllib3 (boto3), so the
// kernel classifies query and JSON bodies inside the head write here.
//   create-user:U         IAM CreateUser (query protocol)
//   delete-table:T        DynamoDB DeleteTable (JSON protocol)
//   vh-put-object:B/K, vh-delete-bucket:B
//                         S3 with virtual-hosted addressing on S3's regional host name, which
//                         this process resolves to 127.0.0.1 (the test certificate covers it)
import https from "node:https";
import { IAMClient, CreateUserCommand } from "@aws-sdk/client-iam";
import { DynamoDBClient, DeleteTableCommand } from "@aws-sdk/client-dynamodb";
import { S3Client, PutObjectCommand, DeleteBucketCommand } from "@aws-sdk/client-s3";

const endpoint = process.env.HOOP_ENDPOINT;
const port = endpoint.split(":").pop();
const region = process.env.AWS_REGION;
const common = { endpoint, maxAttempts: 1 };

const toLoopback = (host, opts, cb) => {
  const addr = host.endsWith(".amazonaws.com") ? "127.0.0.1" : host;
  if (opts.all) cb(null, [{ address: addr, family: 4 }]);
  else cb(null, addr, 4);
};
const s3 = new S3Client({
  endpoint: `https://s3.${region}.amazonaws.com:${port}`,
  forcePathStyle: false,
  maxAttempts: 1,
  requestHandler: { httpsAgent: new https.Agent({ keepAlive: true, lookup: toLoopback }) },
});
const iam = new IAMClient(common);
const ddb = new DynamoDBClient(common);

async function run(step) {
  const i = step.indexOf(":");
  const [op, arg] = [step.slice(0, i), step.slice(i + 1)];
  const [b, k] = [arg.split("/")[0], arg.split("/").slice(1).join("/")];
  switch (op) {
    case "create-user": return iam.send(new CreateUserCommand({ UserName: arg }));
    case "delete-table": return ddb.send(new DeleteTableCommand({ TableName: arg }));
    case "vh-put-object": return s3.send(new PutObjectCommand({ Bucket: b, Key: k, Body: "hoop node object" }));
    case "vh-delete-bucket": return s3.send(new DeleteBucketCommand({ Bucket: b }));
    default: throw new Error(`unknown step ${step}`);
  }
}

for (const step of process.argv.slice(2)) {
  const t = performance.now();
  const res = { step, ok: true };
  try {
    await run(step);
  } catch (e) {
    res.ok = false;
    res.error = `${e.name}: ${e.message}`;
  }
  res.ms = Math.round((performance.now() - t) * 10) / 10;
  res.pid = process.pid;
  console.log(JSON.stringify(res));
}
