#!/bin/sh
# Install writ-principals on an SSH host.
#
#   sudo contrib/host/install.sh --ca-url https://ca.example.com [--binary PATH] [--host-name NAME]
#
# Installs the binary root-owned in /usr/local/bin (sshd requires it), creates the `writ`
# user, /etc/writ/host.toml, /var/lib/writ, the sshd drop-in and the sync service, runs a
# first sync, validates sshd's configuration and reloads it. ROOT=/some/dir installs into
# a directory tree instead of / (no users, services or reload), for packaging and tests.
set -eu

ca_url=""
# Default: the host build (contrib/host/build.sh) if there is one, else the release build.
repo="$(dirname "$0")/../.."
binary="$repo/target/x86_64-unknown-linux-gnu/host/writ-principals"
[ -x "$binary" ] || binary="$repo/target/release/writ-principals"
host_name=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ca-url) ca_url="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --host-name) host_name="$2"; shift 2 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$ca_url" ] || { echo "install.sh: --ca-url is required" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: no executable at $binary (build with contrib/host/build.sh, or cargo build --release)" >&2; exit 2; }
root="${ROOT:-}"
here="$(cd "$(dirname "$0")" && pwd)"

install -d -m 0755 "$root/usr/local/bin" "$root/etc/writ" "$root/var/lib/writ" "$root/etc/ssh/sshd_config.d"
install -m 0755 "$binary" "$root/usr/local/bin/writ-principals"
if [ ! -e "$root/etc/writ/host.toml" ]; then
    sed -e "s|^ca_url = .*|ca_url = \"$ca_url\"|" "$here/host.toml" > "$root/etc/writ/host.toml"
    if [ -n "$host_name" ]; then
        sed -i -e "s|^# host_name = .*|host_name = \"$host_name\"|" "$root/etc/writ/host.toml"
    fi
    chmod 0644 "$root/etc/writ/host.toml"
fi
install -m 0644 "$here/sshd_config.d-writ.conf" "$root/etc/ssh/sshd_config.d/writ.conf"

if [ -n "$root" ]; then
    echo "installed into $root (no users, services or reload)"
    exit 0
fi

getent passwd writ >/dev/null || useradd --system --home-dir /var/lib/writ --shell /usr/sbin/nologin writ
install -m 0644 "$here/../systemd/writ-principals-sync.service" /etc/systemd/system/
/usr/local/bin/writ-principals sync --config /etc/writ/host.toml
sshd -t
if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable --now writ-principals-sync.service
    systemctl reload ssh 2>/dev/null || systemctl reload sshd
fi
echo "writ-principals installed; logins with writ certificates now work on this host"
