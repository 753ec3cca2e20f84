// Makes a fixed set of AWS calls with the AWS SDK for JavaScript v3 against $HOOP_ENDPOINT
// and prints what it did (hoop's end-to-end tests check the agent saw each one once, with its
// service, operation, IAM action and resources). GetCallerIdentity comes first, so the agent
// knows the account of every later call.
import {
  S3Client, CreateBucketCommand, PutObjectCommand, HeadObjectCommand, GetObjectCommand,
  GetObjectAclCommand, ListObjectsV2Command,
} from "@aws-sdk/client-s3";
import { STSClient, GetCallerIdentityCommand, AssumeRoleCommand } from "@aws-sdk/client-sts";
import {
  DynamoDBClient, CreateTableCommand, PutItemCommand, ListTablesCommand,
} from "@aws-sdk/client-dynamodb";
import { IAMClient, CreateRoleCommand } from "@aws-sdk/client-iam";
import {
  SecretsManagerClient, CreateSecretCommand, GetSecretValueCommand,
} from "@aws-sdk/client-secrets-manager";

const endpoint = process.env.HOOP_ENDPOINT;
const suffix = Math.random().toString(16).slice(2, 12);
const bucket = `hoop-node-${suffix}`;
const table = `hoop-node-table-${suffix}`;
const role = `hoop-node-role-${suffix}`;
const secret = `hoop-node-secret-${suffix}`;

const sts = new STSClient({ endpoint });
const id = await sts.send(new GetCallerIdentityCommand({}));

const s3 = new S3Client({ endpoint, forcePathStyle: true });
await s3.send(new CreateBucketCommand({ Bucket: bucket, CreateBucketConfiguration: { LocationConstraint: process.env.AWS_REGION } }));
await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "n.txt", Body: "hello from node" }));
await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: "n.txt" }));
const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: "n.txt" }));
if ((await got.Body.transformToString()) !== "hello from node") throw new Error("object round trip");
await s3.send(new GetObjectAclCommand({ Bucket: bucket, Key: "n.txt" }));
await s3.send(new ListObjectsV2Command({ Bucket: bucket }));

const ddb = new DynamoDBClient({ endpoint });
await ddb.send(new CreateTableCommand({
  TableName: table,
  KeySchema: [{ AttributeName: "id", KeyType: "HASH" }],
  AttributeDefinitions: [{ AttributeName: "id", AttributeType: "S" }],
  BillingMode: "PAY_PER_REQUEST",
}));
await ddb.send(new PutItemCommand({ TableName: table, Item: { id: { S: "1" } } }));
await ddb.send(new ListTablesCommand({}));

const trust = {
  Version: "2012-10-17",
  Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }],
};
const created = await new IAMClient({ endpoint }).send(
  new CreateRoleCommand({ RoleName: role, AssumeRolePolicyDocument: JSON.stringify(trust) }));
const roleArn = created.Role.Arn;
await sts.send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: "hoop-node" }));

const sm = new SecretsManagerClient({ endpoint });
await sm.send(new CreateSecretCommand({ Name: secret, SecretString: "node-secret-" + suffix }));
await sm.send(new GetSecretValueCommand({ SecretId: secret }));

console.log(JSON.stringify({
  pid: process.pid, account: id.Account, caller_arn: id.Arn, bucket, table, role_arn: roleArn, secret,
}));
