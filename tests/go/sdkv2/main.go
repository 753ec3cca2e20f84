// hoop e2e client: AWS SDK for Go v2 against the emulator.
//
//	sdkv2 calls                 STS, S3, DynamoDB calls; prints {"pid":..,"bucket":..,"table":..}
//	sdkv2 stress G N            G goroutines x N STS GetCallerIdentity calls, one shared client
//	sdkv2 bench SECONDS         sequential GetCallerIdentity for SECONDS; prints {"calls":..}
//	sdkv2 grow h1|h2 N          N sequential S3 ListBuckets calls; every TLS write starts on
//	                            a fresh goroutine at a different stack depth, so some writes
//	                            grow the stack in crypto/tls.(*Conn).Write's own prologue
//	sdkv2 churn SECONDS G       G goroutines for SECONDS, each call on a new client (new
//	                            connections, HTTP/2 and HTTP/1.1 alternating); prints the count
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
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	ddbtypes "github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"golang.org/x/net/http2"
)

func die(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func caPool() *x509.CertPool {
	pem, err := os.ReadFile(os.Getenv("HOOP_CA"))
	if err != nil {
		die(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool
}

func httpClient() *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: caPool()},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func config() aws.Config {
	return configWith(httpClient())
}

func configWith(hc *http.Client) aws.Config {
	endpoint := os.Getenv("HOOP_ENDPOINT")
	resolver := aws.EndpointResolverWithOptionsFunc(func(service, region string, _ ...interface{}) (aws.Endpoint, error) {
		return aws.Endpoint{URL: endpoint, HostnameImmutable: true, SigningRegion: region}, nil
	})
	return aws.Config{
		Region:                      os.Getenv("AWS_REGION"),
		Credentials:                 credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		HTTPClient:                  hc,
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

// growConn runs each Write of the *tls.Conn it wraps on a fresh goroutine (whose stack is the
// 8 KiB a new goroutine starts with) after recursing to a depth that changes with every write.
// A recursion level moves the stack pointer by less than the 0x68 bytes that Write's own
// stack check reserves, so over a few hundred writes some land with the stack bound inside
// that window: the runtime grows the stack and restarts Write from its first instruction.
type growConn struct {
	*tls.Conn
}

var writes int64

//go:noinline
func descend(n int, f func()) int {
	if n <= 0 {
		f()
		return 0
	}
	return descend(n-1, f) + 1
}

func (c growConn) Write(b []byte) (int, error) {
	depth := int(atomic.AddInt64(&writes, 1) % 300)
	var n int
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		descend(depth, func() { n, err = c.Conn.Write(b) })
	}()
	<-done
	return n, err
}

func growClient(proto string) *http.Client {
	dial := func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
		var d tls.Dialer
		d.Config = cfg
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return growConn{c.(*tls.Conn)}, nil
	}
	switch proto {
	case "h2":
		tr := &http2.Transport{
			TLSClientConfig: &tls.Config{RootCAs: caPool(), NextProtos: []string{"h2"}},
			DialTLSContext:  dial,
		}
		return &http.Client{Transport: tr, Timeout: 60 * time.Second}
	case "h1":
		cfg := &tls.Config{RootCAs: caPool(), NextProtos: []string{"http/1.1"}}
		tr := &http.Transport{
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dial(ctx, network, addr, cfg)
			},
		}
		return &http.Client{Transport: tr, Timeout: 60 * time.Second}
	}
	die(fmt.Errorf("unknown protocol %q", proto))
	return nil
}

func grow(ctx context.Context, proto string, n int) {
	// ListBuckets: a request without a body. With a custom dialer, net/http's write loop can
	// race the SDK closing a request body after the response arrived, and then drops the
	// connection under the response being read (seen without any probe attached).
	s3c := s3.NewFromConfig(configWith(growClient(proto)), func(o *s3.Options) { o.UsePathStyle = true })
	for i := 0; i < n; i++ {
		if _, err := s3c.ListBuckets(ctx, &s3.ListBucketsInput{}); err != nil {
			die(err)
		}
	}
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "calls": n, "writes": atomic.LoadInt64(&writes)})
}

// churn: g goroutines call for secs seconds; every call gets a new client with its own
// transport (a new TLS connection: freed *tls.Conn addresses get reused), HTTP/2 and HTTP/1.1
// alternating. Every tenth call of a goroutine runs after a deep recursion, so its stack has
// grown and later shrinks at GC.
func churn(ctx context.Context, secs float64, g int) {
	deadline := time.Now().Add(time.Duration(secs * float64(time.Second)))
	var calls, errs int64
	var wg sync.WaitGroup
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; time.Now().Before(deadline); j++ {
				hc := httpClient()
				tr := hc.Transport.(*http.Transport)
				if (i+j)%2 == 1 {
					// HTTP/1.1 only: no ALPN h2, no automatic upgrade.
					tr.ForceAttemptHTTP2 = false
					tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
				}
				st := sts.NewFromConfig(configWith(hc))
				call := func() {
					if _, err := st.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{}); err != nil {
						fmt.Fprintln(os.Stderr, "call failed:", err)
						atomic.AddInt64(&errs, 1)
					}
					atomic.AddInt64(&calls, 1)
				}
				if j%10 == 9 {
					descend(2000, call)
				} else {
					call()
				}
				tr.CloseIdleConnections()
			}
		}(i)
	}
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"pid": os.Getpid(), "calls": calls, "errors": errs})
	if errs > 0 {
		os.Exit(2)
	}
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
	case "grow":
		if len(os.Args) < 3 {
			die(fmt.Errorf("grow h1|h2 N"))
		}
		grow(ctx, os.Args[2], arg(3, 600))
	case "churn":
		s, err := strconv.ParseFloat(os.Args[2], 64)
		if err != nil {
			die(err)
		}
		churn(ctx, s, arg(3, 16))
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
