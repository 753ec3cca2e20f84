"""Sequential boto3 calls on one keep-alive connection; prints calls per second as JSON.

Usage: boto3_rate.py CALLS  (endpoint, credentials and CA from the environment)."""
import json
import os
import sys
import time

import boto3

calls = int(sys.argv[1])
sts = boto3.client("sts", endpoint_url=os.environ["HOOP_ENDPOINT"])
ddb = boto3.client("dynamodb", endpoint_url=os.environ["HOOP_ENDPOINT"])
sts.get_caller_identity()  # connect and warm up
ddb.list_tables()
start = time.perf_counter()
for i in range(calls):
    if i % 2:
        sts.get_caller_identity()
    else:
        ddb.list_tables()
elapsed = time.perf_counter() - start
print(json.dumps({"calls": calls, "seconds": elapsed, "rate": calls / elapsed}))
