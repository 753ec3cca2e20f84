// hoop e2e client: AWS SDK for Go v2 against the emulator.
//
//	sdkv2 calls                 STS, S3, DynamoDB calls; prints {"pid":..,"bucket":..,"table":..}
//	sdkv2 stress G N            G goroutines x N STS GetCallerIdentity calls, one shared client
//	sdkv2 bench SECONDS         sequential GetCallerIdentity for SECONDS; prints {"calls":..}
//	sdkv2 wait SECONDS          sleeps (lets an agent attach to the executable first)
//
// Endpoint from HOOP_ENDPOINT, CA certificate from HOOP_CA; HTTP/2 is used whenever the server
// offers it over ALPN.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func die(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func httpClient() *http.Client {
	pem, err := os.ReadFile(os.Getenv("HOOP_CA"))
	if err != nil {
		die(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func config() aws.Config {
	endpoint := os.Getenv("HOOP_ENDPOINT")
	resolver := aws.EndpointResolverWithOptionsFunc(func(service, region string, _ ...interface{}) (aws.Endpoint, error) {
		return aws.Endpoint{URL: endpoint, HostnameImmutable: true, SigningRegion: region}, nil
	})
	return aws.Config{
		Region:                      os.Getenv("AWS_REGION"),
		Credentials:                 credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		HTTPClient:                  httpClient(),
		EndpointResolverWithOptions: resolver,
		RetryMaxAttempts:            1,
	}
}

func calls(ctx context.Context, cfg aws.Config) {
	suffix := strconv.Itoa(os.Getpid())
	bucket := "hoop-go2-" + suffix
	table := "hoop-go2-" + suffix
	st := sts.NewFromConfig(cfg)
	if _, err := st.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
		die(err)
	}
	s3c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket, CreateBucketConfiguration: &s3types.CreateBucketConfiguration{LocationConstraint: s3types.BucketLocationConstraint(cfg.Region)}}); err != nil {
		die(err)
	}
	key := "hello.txt"
	if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: strings.NewReader("hello from go v2")}); err != nil {
		die(err)
	}
	out, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		die(err)
	}
	// Read the body: a response whose body is never read leaves the connection (and the
	// agent's view of the response) unfinished.
	if _, err := io.ReadAll(out.Body); err != nil {
		die(err)
	}
	out.Body.Close()
	if _, err := s3c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &bucket}); err != nil {
		die(err)
	}
	ddb := dynamodb.NewFromConfig(cfg)
	if _, err := ddb.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            &table,
		AttributeDefinitions: []ddbtypes.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: ddbtypes.ScalarAttributeTypeS}},
		KeySchema:            []ddbtypes.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: ddbtypes.KeyTypeHash}},
		BillingMode:          ddbtypes.BillingModePayPerRequest,
	}); err != nil {
		die(err)
	}
	if _, err := ddb.PutItem(ctx, &dynamodb.PutItemInput{TableName: &table, Item: map[string]ddbtypes.AttributeValue{"id": &ddbtypes.AttributeValueMemberS{Value: "1"}}}); err != nil {
		die(err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "bucket": bucket, "table": table})
}

func stress(ctx context.Context, cfg aws.Config, g, n int) {
	st := sts.NewFromConfig(cfg)
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := 0
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < n; j++ {
				if _, err := st.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "calls": g * n, "errors": errs})
	if errs > 0 {
		os.Exit(2)
	}
}

func bench(ctx context.Context, cfg aws.Config, secs float64) {
	st := sts.NewFromConfig(cfg)
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	n, errs := 0, 0
	for time.Now().Before(deadline) {
		if _, err := st.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
			// The emulator sometimes closes a kept-alive HTTP/1.1 connection under load:
			// count it, do not stop the measurement.
			fmt.Fprintln(os.Stderr, "call failed:", err)
			errs++
			if errs > 10 {
				die(err)
			}
		}
		n++
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "calls": n, "errors": errs, "seconds": secs})
}

func main() {
	ctx := context.Background()
	mode := "calls"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	if mode == "wait" && len(os.Args) > 2 {
		// Sleeps so an agent can attach to this executable before a measured run.
		s, _ := strconv.ParseFloat(os.Args[2], 64)
		time.Sleep(time.Duration(s * float64(time.Second)))
		return
	}
	cfg := config()
	arg := func(i, def int) int {
		if len(os.Args) > i {
			if v, err := strconv.Atoi(os.Args[i]); err == nil {
				return v
			}
		}
		return def
	}
	switch mode {
	case "calls":
		calls(ctx, cfg)
	case "stress":
		stress(ctx, cfg, arg(2, 50), arg(3, 40))
	case "bench":
		s, err := strconv.ParseFloat(os.Args[2], 64)
		if err != nil {
			die(err)
		}
		bench(ctx, cfg, s)
	default:
		die(fmt.Errorf("unknown mode %q", mode))
	}
}
