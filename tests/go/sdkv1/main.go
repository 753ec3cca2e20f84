// hoop e2e client: AWS SDK for Go v1 against the emulator.
//
//	sdkv1 calls         STS, S3, DynamoDB calls; prints {"pid":..,"bucket":..,"table":..}
//	sdkv1 wait SECONDS  sleeps (lets an agent attach to the executable first)
//
// Endpoint from HOOP_ENDPOINT, CA certificate from HOOP_CA; HTTP/2 is used whenever the server
// offers it over ALPN.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/dynamodb"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/aws/aws-sdk-go/service/sts"
)

func die(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "wait" {
		// Sleeps so an agent can attach to this executable before a measured run.
		s, _ := strconv.ParseFloat(os.Args[2], 64)
		time.Sleep(time.Duration(s * float64(time.Second)))
		return
	}
	pem, err := os.ReadFile(os.Getenv("HOOP_CA"))
	if err != nil {
		die(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		Timeout:   60 * time.Second,
	}
	sess, err := session.NewSession(&aws.Config{
		Region:           aws.String(os.Getenv("AWS_REGION")),
		Endpoint:         aws.String(os.Getenv("HOOP_ENDPOINT")),
		Credentials:      credentials.NewStaticCredentials(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		HTTPClient:       client,
		S3ForcePathStyle: aws.Bool(true),
		MaxRetries:       aws.Int(0),
	})
	if err != nil {
		die(err)
	}
	suffix := strconv.Itoa(os.Getpid())
	bucket := "hoop-go1-" + suffix
	table := "hoop-go1-" + suffix
	if _, err := sts.New(sess).GetCallerIdentity(&sts.GetCallerIdentityInput{}); err != nil {
		die(err)
	}
	s3c := s3.New(sess)
	if _, err := s3c.CreateBucket(&s3.CreateBucketInput{Bucket: &bucket, CreateBucketConfiguration: &s3.CreateBucketConfiguration{LocationConstraint: aws.String(os.Getenv("AWS_REGION"))}}); err != nil {
		die(err)
	}
	if _, err := s3c.PutObject(&s3.PutObjectInput{Bucket: &bucket, Key: aws.String("hello.txt"), Body: strings.NewReader("hello from go v1")}); err != nil {
		die(err)
	}
	if _, err := s3c.ListObjectsV2(&s3.ListObjectsV2Input{Bucket: &bucket}); err != nil {
		die(err)
	}
	ddb := dynamodb.New(sess)
	if _, err := ddb.CreateTable(&dynamodb.CreateTableInput{
		TableName:            &table,
		AttributeDefinitions: []*dynamodb.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: aws.String("S")}},
		KeySchema:            []*dynamodb.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: aws.String("HASH")}},
		BillingMode:          aws.String("PAY_PER_REQUEST"),
	}); err != nil {
		die(err)
	}
	if _, err := ddb.PutItem(&dynamodb.PutItemInput{TableName: &table, Item: map[string]*dynamodb.AttributeValue{"id": {S: aws.String("1")}}}); err != nil {
		die(err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "bucket": bucket, "table": table})
}
