#!/usr/bin/env python3
"""Open a writ task with one POST, no SDK: a fresh ed25519 key, the workload token from
a file, and the certificate written next to the key. Usage:
    open_task.py https://ca.example.com /var/run/secrets/writ/token deploy web-01.prod.example.com
"""
import json, subprocess, sys, tempfile, urllib.request

ca_url, token_file, login, host = sys.argv[1:5]
key = tempfile.mkdtemp() + "/id_ed25519"
subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
body = {"public_key": open(key + ".pub").read().strip(),
        "task": {"logins": [login], "hosts": [host], "purpose": "one-off check", "ttl_seconds": 600}}
request = urllib.request.Request(
    ca_url + "/v1/certificates", data=json.dumps(body).encode(), method="POST",
    headers={"Authorization": "Bearer " + open(token_file).read().strip(),
             "Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(request))
open(key + "-cert.pub", "w").write(answer["certificate"] + "\n")
print(f"task {answer['task_id']} until {answer['task_expires_at']}: ssh -i {key} {login}@{host}")
