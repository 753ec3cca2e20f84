"""Serves the plain-HTTP AWS credential endpoints on their real link-local addresses (which the
test adds to `lo`), with the response shapes AWS documents:

- instance metadata (IMDSv2) on 169.254.169.254 and [fd00:ec2::254]: token, role list, role
  credentials, instance identity document;
- ECS task role on 169.254.170.2 (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`), with `RoleArn`;
- EKS Pod Identity on 169.254.170.23 (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + authorization
  token), with `AccountId`.

Usage: credential_endpoints.py SPEC_JSON. SPEC_JSON holds the role name, account, instance id
and one set of keys per endpoint; the clients use the keys against the emulator. Prints
"ready" once every address is listening.
"""

import json
import socket
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPEC = json.loads(sys.argv[1])
EXPIRES = (datetime.now(timezone.utc) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
IMDS_TOKEN = "AQAEAHoopImdsToken=="


def creds(which):
    k = SPEC[which]
    return {
        "AccessKeyId": k["key"],
        "SecretAccessKey": k["secret"],
        "Token": k["token"],
        "Expiration": EXPIRES,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path == "/latest/api/token":
            self.send_response(200)
            self.send_header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            self.send_header("Content-Length", str(len(IMDS_TOKEN)))
            self.end_headers()
            self.wfile.write(IMDS_TOKEN.encode())
        else:
            self.reply(404, "not found")

    def do_GET(self):
        host = self.server.server_address[0]
        path = self.path.split("?")[0]
        if host in ("169.254.169.254", "fd00:ec2::254"):
            if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                return self.reply(401, "")
            role = SPEC["role"]
            base = "/latest/meta-data/iam/security-credentials/"
            if path == base:
                return self.reply(200, role)
            if path == base + role:
                which = "imds6" if host == "fd00:ec2::254" else "imds"
                body = dict(Code="Success", LastUpdated=EXPIRES, Type="AWS-HMAC", **creds(which))
                return self.reply(200, json.dumps(body, indent=2))
            if path == "/latest/dynamic/instance-identity/document":
                doc = {
                    "accountId": SPEC["account"],
                    "instanceId": SPEC["instance"],
                    "region": "us-east-1",
                    "instanceType": "m7i.large",
                    "imageId": "ami-0abcdef1234567890",
                    "availabilityZone": "us-east-1a",
                    "architecture": "x86_64",
                }
                return self.reply(200, json.dumps(doc, indent=2), "text/plain")
            if path == "/latest/meta-data/placement/region":
                return self.reply(200, "us-east-1")
            return self.reply(404, "not found")
        if host == "169.254.170.2" and path == SPEC["ecs_path"]:
            body = dict(RoleArn=SPEC["ecs_role_arn"], **creds("ecs"))
            return self.reply(200, json.dumps(body), "application/json")
        if host == "169.254.170.23" and path == "/v1/credentials":
            if self.headers.get("Authorization") != SPEC["pod_token"]:
                return self.reply(401, "")
            body = dict(AccountId=SPEC["account"], **creds("pod"))
            return self.reply(200, json.dumps(body), "application/json")
        self.reply(404, "not found")


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


servers = []
for addr in ["169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.170.23"]:
    cls = Server6 if ":" in addr else ThreadingHTTPServer
    servers.append(cls((addr, 80), Handler))
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
