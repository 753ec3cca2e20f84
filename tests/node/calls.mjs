// Makes a fixed set of AWS calls with the AWS SDK for JavaScript v3 against $HOOP_ENDPOINT
// and prints what it did (hoop's end-to-end tests check the agent saw each one once).
import { S3Client, CreateBucketCommand, PutObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { DynamoDBClient, ListTablesCommand } from "@aws-sdk/client-dynamodb";

const endpoint = process.env.HOOP_ENDPOINT;
const suffix = Math.random().toString(16).slice(2, 12);
const bucket = `hoop-node-${suffix}`;

const s3 = new S3Client({ endpoint, forcePathStyle: true });
await s3.send(new CreateBucketCommand({ Bucket: bucket, CreateBucketConfiguration: { LocationConstraint: process.env.AWS_REGION } }));
await s3.send(new PutObjectCommand({ Bucket: bucket, Key: "n.txt", Body: "hello from node" }));
await s3.send(new ListObjectsV2Command({ Bucket: bucket }));
const id = await new STSClient({ endpoint }).send(new GetCallerIdentityCommand({}));
await new DynamoDBClient({ endpoint }).send(new ListTablesCommand({}));
console.log(JSON.stringify({ pid: process.pid, bucket, caller_arn: id.Arn }));
