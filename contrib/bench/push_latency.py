#!/usr/bin/env python3
"""Push latency (issue 19): how long after `POST /v1/tasks/{id}/complete` is answered every
one of N hosts running `writ-principals sync --watch` has installed the feed naming the
task, and what 1,000 held `GET /v1/revocations?after=&wait=` requests cost the CA.

A benchmark, not a test: it prints figures for docs/performance.md. Everything runs on
this machine: `writ serve --dev` (SQLite) on an ephemeral port, N sync processes with
their own state directories (interval 1h, so only push delivers), one task per round.

    python3 contrib/bench/push_latency.py --bin target/release --hosts 50 --rounds 40
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def http(url, method="GET", body=None, token=None):
    request = urllib.request.Request(url, method=method, data=body)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def proc_stat(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS"))
    return cpu, rss


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--bin", default="target/release", help="directory of writ and writ-principals")
    args.add_argument("--hosts", type=int, default=50)
    args.add_argument("--rounds", type=int, default=40)
    args.add_argument("--held", type=int, default=1000, help="held requests for the cost figure")
    opts = args.parse_args()
    writ = os.path.abspath(os.path.join(opts.bin, "writ"))
    principals = os.path.abspath(os.path.join(opts.bin, "writ-principals"))
    work = tempfile.mkdtemp(prefix="writ-push-")
    os.chmod(work, 0o755)
    port = free_port()
    ca = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([writ, "serve", "--dev", "--listen", f"127.0.0.1:{port}"],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = [server]
    try:
        deadline = time.time() + 60
        while True:
            try:
                http(f"{ca}/readyz")
                break
            except Exception:
                if time.time() > deadline:
                    sys.exit("the CA did not start")
                time.sleep(0.05)
        feeds = []
        for n in range(opts.hosts):
            host = os.path.join(work, f"host{n}")
            state = os.path.join(host, "state")
            os.makedirs(state, mode=0o755)
            config = os.path.join(host, "host.toml")
            with open(config, "w") as f:
                f.write(f'ca_url = "{ca}"\nhost_name = "web-{n}"\nstate_dir = "{state}"\n')
            children.append(subprocess.Popen(
                [principals, "sync", "--watch", "--interval", "1h", "--config", config],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            feeds.append(os.path.join(state, "revocations.json"))
        while not all(os.path.exists(f) for f in feeds):
            time.sleep(0.05)
        time.sleep(1)  # every host's held request is at the CA
        key = os.path.join(work, "agent")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        public = open(key + ".pub").read().strip()
        last, every = [], []
        for _ in range(opts.rounds):
            token = subprocess.run([writ, "dev", "token", "--sub", "bench"], cwd=work,
                                   capture_output=True, text=True, check=True).stdout.strip()
            body = json.dumps({"public_key": public, "task": {
                "logins": ["deploy"], "hosts": ["web-*"], "purpose": "push bench"}}).encode()
            task = json.loads(http(f"{ca}/v1/certificates", "POST", body, token))["task_id"]
            token = subprocess.run([writ, "dev", "token", "--sub", "bench"], cwd=work,
                                   capture_output=True, text=True, check=True).stdout.strip()
            http(f"{ca}/v1/tasks/{task}/complete", "POST", b"{}", token)
            answered = time.time()
            applied = {}
            while len(applied) < len(feeds):
                for feed in feeds:
                    if feed in applied:
                        continue
                    try:
                        if task in open(feed).read():
                            applied[feed] = os.stat(feed).st_mtime - answered
                    except OSError:
                        pass
                time.sleep(0.002)
            every.extend(applied.values())
            last.append(max(applied.values()))
            time.sleep(0.2)
        ms = lambda s: f"{max(s, 0) * 1000:.0f} ms"
        print(f"hosts {opts.hosts}, rounds {opts.rounds}")
        print(f"last host applied: p50 {ms(percentile(last, 50))}, p99 {ms(percentile(last, 99))}, "
              f"max {ms(max(last))}")
        print(f"every host:        p50 {ms(percentile(every, 50))}, p99 {ms(percentile(every, 99))}")
        for child in children[1:]:
            child.kill()
            child.wait()
        children = [server]
        time.sleep(1)
        # The cost of held requests: open them, then watch the CA's CPU and memory.
        sequence = json.loads(json.loads(http(f"{ca}/v1/revocations?version=2"))["feed"])["sequence"]
        cpu0, rss0 = proc_stat(server.pid)
        held = []
        request = (f"GET /v1/revocations?version=2&after={sequence}&wait=60 HTTP/1.1\r\n"
                   f"Host: 127.0.0.1\r\n\r\n").encode()
        for _ in range(opts.held):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            held.append(s)
        time.sleep(2)
        cpu1, rss1 = proc_stat(server.pid)
        time.sleep(10)
        cpu2, rss2 = proc_stat(server.pid)
        print(f"{opts.held} held requests: RSS {rss0} KiB idle -> {rss2} KiB held "
              f"(+{(rss2 - rss0) / opts.held:.1f} KiB each); CPU {cpu1 - cpu0:.2f} s to accept them, "
              f"{(cpu2 - cpu1) / 10 * 100:.1f}% of a core while held")
        for s in held:
            s.close()
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
