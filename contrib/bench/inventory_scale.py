#!/usr/bin/env python3
"""Inventory at scale (issue 20): how long `writ-principals inventory --json` takes on a host
with 1,000 accounts and 10,000 authorized_keys entries.

A benchmark, not a test: it prints wall times. It builds a scratch root in a temporary
directory (removed afterwards): /etc/passwd, /etc/shadow and /etc/group with ACCOUNTS
accounts, a home for each with KEYS_PER_ACCOUNT authorized_keys entries (80 % Ed25519,
20 % RSA-3072, some with options), one unencrypted private key in every tenth home and
a few other files; an sshd_config with a host key made here and three `Match User` blocks
(so sshd runs 1 + 3 times); then runs the inventory RUNS times (the first run also fills
the page cache) and prints each wall time and the median.

    python3 contrib/bench/inventory_scale.py --bin target/release/writ-principals
    python3 contrib/bench/inventory_scale.py --accounts 1000 --keys-per-account 10 --runs 5

Nothing outside the temporary directory is read or written, except that /usr/sbin/sshd (or
--sshd) is run with `-T` on the scratch configuration.
"""

import argparse
import base64
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time


def ssh_string(data):
    return struct.pack(">I", len(data)) + data


def mpint(value):
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if raw and raw[0] & 0x80:
        raw = b"\x00" + raw
    return ssh_string(raw)


def ed25519_line(comment):
    blob = ssh_string(b"ssh-ed25519") + ssh_string(os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def rsa_line(comment):
    # A random odd 3072-bit modulus: parsed and fingerprinted like a real key.
    n = int.from_bytes(os.urandom(384), "big") | (1 << 3071) | 1
    blob = ssh_string(b"ssh-rsa") + mpint(65537) + mpint(n)
    return f"ssh-rsa {base64.b64encode(blob).decode()} {comment}"


OPTIONS = ["", "", "", 'from="10.0.0.0/8",no-pty ', 'restrict,command="/usr/bin/backup --now" ']


def build(root, accounts, keys_per_account, private_key):
    etc = os.path.join(root, "etc")
    os.makedirs(etc)
    passwd, shadow, group = [], [], []
    passwd.append("root:x:0:0:root:/root:/bin/bash")
    shadow.append("root:!:19000:0:99999:7:::")
    group.append("root:x:0:")
    keys = 0
    for i in range(accounts):
        login = f"user{i:04d}"
        uid = 2000 + i
        home = f"/home/{login}"
        passwd.append(f"{login}:x:{uid}:{uid}::{home}:/bin/bash")
        shadow.append(f"{login}:{'!' if i % 7 else '$6$salt$hash'}:19000:0:99999:7:::")
        group.append(f"{login}:x:{uid}:")
        ssh = os.path.join(root, home.lstrip("/"), ".ssh")
        os.makedirs(ssh)
        lines = []
        for k in range(keys_per_account):
            comment = f"{login}-key{k}@example.com"
            key = rsa_line(comment) if k % 5 == 4 else ed25519_line(comment)
            lines.append(OPTIONS[(i + k) % len(OPTIONS)] + key)
            keys += 1
        with open(os.path.join(ssh, "authorized_keys"), "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(os.path.join(ssh, "authorized_keys"), 0o600)
        with open(os.path.join(ssh, "known_hosts"), "w") as f:
            f.write("example.com ssh-ed25519 AAAA\n")
        with open(os.path.join(root, home.lstrip("/"), ".bashrc"), "w") as f:
            f.write("# bashrc\n" * 20)
        if i % 10 == 0:
            shutil.copy(private_key, os.path.join(ssh, "id_ed25519"))
            os.chmod(os.path.join(ssh, "id_ed25519"), 0o600)
    for name, lines in (("passwd", passwd), ("shadow", shadow), ("group", group)):
        with open(os.path.join(etc, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return keys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="target/release/writ-principals")
    parser.add_argument("--sshd", default="/usr/sbin/sshd")
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--keys-per-account", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    if not os.path.isfile(binary):
        sys.exit(f"{binary} is missing: cargo build --release -p writ-principals (or --bin)")

    with tempfile.TemporaryDirectory(prefix="writ-inventory-bench-") as scratch:
        private_key = os.path.join(scratch, "id_ed25519")
        host_key = os.path.join(scratch, "ssh_host_ed25519_key")
        for path in (private_key, host_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True
            )
        root = os.path.join(scratch, "root")
        started = time.monotonic()
        keys = build(root, args.accounts, args.keys_per_account, private_key)
        print(
            f"scratch root: {args.accounts} accounts, {keys} authorized_keys entries "
            f"(built in {time.monotonic() - started:.1f}s)"
        )
        config = os.path.join(scratch, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"HostKey {host_key}\n"
                "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "Match User user0001,user0002\n  PasswordAuthentication yes\n"
                "Match User root\n  AuthorizedKeysFile none\n"
                "Match User user09*\n  PubkeyAuthentication yes\n"
                "Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n"
            )
        command = [
            binary, "inventory", "--json",
            "--root", root,
            "--sshd-config", config,
            "--sshd", args.sshd,
            "--config", os.path.join(scratch, "no-host.toml"),
        ]
        times = []
        for run in range(args.runs):
            started = time.monotonic()
            result = subprocess.run(command, capture_output=True, check=False)
            elapsed = time.monotonic() - started
            if result.returncode != 0:
                sys.exit(f"inventory failed ({result.returncode}): {result.stderr.decode()}")
            document = json.loads(result.stdout)
            times.append(elapsed)
            print(
                f"run {run + 1}: {elapsed * 1000:.0f} ms wall, "
                f"{len(document['accounts'])} accounts, "
                f"{sum(len(a['authorized_keys']) for a in document['accounts'])} entries, "
                f"{len(document['private_keys'])} private keys, "
                f"sshd error: {document['sshd']['error']}, limits_hit: {document['limits_hit']}"
            )
        print(f"median: {statistics.median(times) * 1000:.0f} ms wall over {len(times)} runs")


if __name__ == "__main__":
    main()
