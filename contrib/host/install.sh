#!/bin/sh
# Install writ-principals on an SSH host, as one transaction.
#
#   sudo contrib/host/install.sh --ca-url https://ca.example.com [--binary PATH]
#       [--host-name NAME] [--sshd-config PATH] [--user NAME] [--no-reload]
#   sudo /usr/share/writ-principals/install.sh --packaged [--ca-url URL] [...]
#
# --packaged: the writ-principals .deb is installed (README "Packages"): the binary is the
# package's /usr/bin/writ-principals and the sync service its unit, so neither is copied;
# --ca-url may be left out when /etc/writ/host.toml (the package's conffile) names it.
#
# Steps, in this order (nothing that changes how sshd authenticates is in place before 4):
#   1. Preflight: arguments, the binary, the user sshd runs the check as (created if
#      missing), and `sshd -t` of the current sshd configuration.
#   2. The binary, root-owned, as /usr/local/bin/writ-principals (sshd insists); the config
#      /etc/writ/host.toml (an existing one is kept, with --ca-url and --host-name set in
#      it); the state directory /var/lib/writ; then a first `writ-principals sync`, which
#      must succeed; and, when host.toml has a [host_certificates] table, a first
#      `writ-principals host-cert`, which must succeed too (the drop-in then gets a
#      HostCertificate line per certificate).
#   3. Keeping the state current: with a running systemd, writ-principals-sync.service;
#      without, the cron file /etc/cron.d/writ-principals-sync (when cron's directory
#      exists), and the foreground command is printed.
#   4. The sshd drop-in /etc/ssh/sshd_config.d/writ.conf: checked as a candidate first
#      (`sshd -t` of a configuration that includes it), then put in place and checked again
#      (`sshd -t`, and `sshd -T` must show its settings in effect), then sshd is reloaded:
#      through systemd, else with SIGHUP to the pid in sshd's PidFile, else the operator
#      is told to.
# Any failure undoes every step already taken (files it replaced are restored from
# backups, files and directories it created are removed) and exits non-zero before sshd
# is reloaded, so logins work exactly as before.
#
# ROOT=/some/dir installs into a scratch root instead of /: every path above is under it
# and the files name each other there (the drop-in runs $ROOT/usr/local/bin/writ-
# principals), no user is created (--user must exist) and systemd is never touched. sshd's
# configuration defaults to $ROOT/etc/ssh/sshd_config; point --sshd-config at one that
# includes $ROOT/etc/ssh/sshd_config.d/*.conf. For tests and trials; packages are built
# with `cargo deb` (README "Packages").
#
# Environment: SSHD, the sshd binary used for -t and -T (default /usr/sbin/sshd).
set -eu

me="install.sh"
say() { printf '%s: %s\n' "$me" "$*"; }
warn() { printf '%s: %s\n' "$me" "$*" >&2; }
usage() {
    warn "usage: install.sh --ca-url URL [--binary PATH] [--host-name NAME] [--sshd-config PATH] [--user NAME] [--no-reload] [--packaged]"
    exit 2
}
# Refuse before anything is written (exit 2).
refuse() { warn "$*"; exit 2; }

ca_url=""
config_edits=""
packaged=0
host_name=""
sshd_config=""
user="writ"
reload=1
# Default binary: the host build (contrib/host/build.sh) if there is one, else release.
repo="$(dirname "$0")/../.."
binary="$repo/target/x86_64-unknown-linux-gnu/host/writ-principals"
[ -x "$binary" ] || binary="$repo/target/release/writ-principals"
while [ $# -gt 0 ]; do
    case "$1" in
        --ca-url | --binary | --host-name | --sshd-config | --user)
            [ $# -ge 2 ] || usage
            case "$1" in
                --ca-url) ca_url="$2" ;;
                --binary) binary="$2" ;;
                --host-name) host_name="$2" ;;
                --sshd-config) sshd_config="$2" ;;
                --user) user="$2" ;;
            esac
            shift 2
            ;;
        --no-reload) reload=0; shift ;;
        --packaged) packaged=1; shift ;;
        -h | --help) usage ;;
        *) warn "unknown argument $1"; usage ;;
    esac
done

# --- 1. Preflight ----------------------------------------------------------------------
# Values end up in sed replacements, sshd_config and a cron line: accept plain characters.
if [ -n "$ca_url" ]; then
    case "$ca_url" in
        http://* | https://*) ;;
        *) refuse "--ca-url must start with https:// (or http:// to a loopback address)" ;;
    esac
    case "$ca_url" in *[!]A-Za-z0-9.:/_~%@+[-]*) refuse "--ca-url has characters it should not have" ;; esac
fi
case "$host_name" in *[!A-Za-z0-9.-]*) refuse "--host-name must be a DNS name" ;; esac
case "$user" in "" | -* | *[!A-Za-z0-9._-]*) refuse "--user must be a plain user name" ;; esac

root="${ROOT:-}"
root="${root%/}"
case "$root" in
    "") ;;
    /*) case "$root" in *[!A-Za-z0-9._/-]*) refuse "ROOT must be a plain absolute path" ;; esac ;;
    *) refuse "ROOT must be an absolute path" ;;
esac
[ "$(id -u)" = 0 ] || refuse "run as root (sshd only runs a root-owned AuthorizedPrincipalsCommand)"

if [ "$packaged" = 1 ]; then
    bin_path="$root/usr/bin/writ-principals"
    [ -x "$bin_path" ] || refuse "--packaged, but there is no $bin_path: install the writ-principals package first"
else
    bin_path="$root/usr/local/bin/writ-principals"
    [ -x "$binary" ] || refuse "no executable at $binary (build with contrib/host/build.sh, or cargo build --release -p writ-principals)"
fi
config_path="$root/etc/writ/host.toml"
state_dir="$root/var/lib/writ"
dropin_dir="$root/etc/ssh/sshd_config.d"
dropin="$dropin_dir/writ.conf"
cron_path="$root/etc/cron.d/writ-principals-sync"
unit_name="writ-principals-sync.service"
unit_path="/etc/systemd/system/$unit_name"
[ -n "$sshd_config" ] || sshd_config="$root/etc/ssh/sshd_config"
sshd="${SSHD:-/usr/sbin/sshd}"
here="$(cd "$(dirname "$0")" && pwd)"
watch_cmd="$bin_path sync --config $config_path --watch --interval 10s"

# systemd only for a real install on a host where it is running (not merely installed).
use_systemd=0
if [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    use_systemd=1
fi

[ -x "$sshd" ] || refuse "no sshd at $sshd (set SSHD=/path/to/sshd)"
[ -f "$sshd_config" ] || refuse "no sshd configuration at $sshd_config (pass --sshd-config PATH)"
"$sshd" -t -f "$sshd_config" ||
    refuse "sshd -t -f $sshd_config fails before any change: fix sshd's configuration first"

if [ -f "$config_path" ]; then
    # Keep the operator's config; the drop-in must name the state directory it uses.
    existing_state="$(sed -n 's/^[[:space:]]*state_dir[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config_path" | tail -n 1)"
    state_dir="${existing_state:-/var/lib/writ}"
    case "$state_dir" in
        /*) case "$state_dir" in *[!A-Za-z0-9._/-]*) refuse "state_dir in $config_path must be a plain absolute path" ;; esac ;;
        *) refuse "state_dir in $config_path must be an absolute path" ;;
    esac
    existing_url="$(sed -n 's/^[[:space:]]*ca_url[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$config_path" | tail -n 1)"
    # --ca-url and --host-name given for an existing config are set in it (backed up and
    # restored on failure, like every file replaced); everything else in it is kept.
    if [ -n "$ca_url" ] && [ "$existing_url" != "$ca_url" ]; then
        config_edits="s|^[[:space:]]*ca_url[[:space:]]*=.*|ca_url = \"$ca_url\"|"
    fi
    if [ -n "$host_name" ] && ! grep -qx "host_name = \"$host_name\"" "$config_path"; then
        grep -q '^[[:space:]]*#*[[:space:]]*host_name[[:space:]]*=' "$config_path" ||
            refuse "$config_path has no host_name line to set: add host_name = \"$host_name\" yourself"
        config_edits="${config_edits:+$config_edits;}s|^[[:space:]]*#*[[:space:]]*host_name[[:space:]]*=.*|host_name = \"$host_name\"|"
    fi
else
    [ -n "$ca_url" ] || refuse "--ca-url is required (there is no $config_path yet)"
fi

# --- The transaction journal ------------------------------------------------------------
# Everything written from here on is recorded, and undone by rollback() on any failure.
tmp="$(mktemp -d)"
new_files=""     # created by us: removed on rollback
backups=""       # replaced by us: FILE.writ-backup restored on rollback
new_dirs=""      # created by us, innermost last: removed (if empty) on rollback
state_created=0  # the state directory is ours: the files sync wrote go too
unit_enabled=0   # we enabled the sync service
unit_was_enabled=0
user_created=0   # we created the user
committed=0

rollback() {
    set +e # Undo as much as possible, whatever fails.
    if [ "$unit_enabled" = 1 ]; then
        if [ "$unit_was_enabled" = 1 ]; then
            systemctl try-restart "$unit_name" >/dev/null 2>&1 || true
        else
            systemctl disable --now "$unit_name" >/dev/null 2>&1 || true
        fi
    fi
    for f in $new_files; do rm -f "$f"; done
    for f in $backups; do mv -f "$f.writ-backup" "$f"; done
    if [ "$unit_enabled" = 1 ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
    if [ "$state_created" = 1 ]; then
        rm -f "$state_dir/trusted_user_ca_keys" "$state_dir/revoked.krl" "$state_dir/revocations.json"
    fi
    reversed=""
    for d in $new_dirs; do reversed="$d $reversed"; done
    for d in $reversed; do rmdir "$d" 2>/dev/null; done
    if [ "$user_created" = 1 ]; then userdel "$user" 2>/dev/null; fi
}

on_exit() {
    status=$1
    trap - EXIT
    if [ "$committed" != 1 ]; then
        [ "$status" != 0 ] || status=1
        rollback
        warn "rolled back: everything this run wrote was removed or restored; sshd was not reloaded"
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap 'on_exit $?' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    warn "$*"
    exit 1
}

# mkdir -p, recording each directory created.
make_dirs() {
    for want in "$@"; do
        missing=""
        d="$want"
        while [ -n "$d" ] && [ "$d" != / ] && [ ! -d "$d" ]; do
            missing="$d $missing"
            d="$(dirname "$d")"
        done
        for d in $missing; do
            mkdir -m 0755 "$d" || fail "cannot create $d"
            new_dirs="$new_dirs $d"
        done
    done
}

# put SRC DEST MODE: install SRC as DEST (root-owned) through a rename, recording a
# backup of a DEST it replaces.
put() {
    if [ -e "$2" ]; then
        cp -p "$2" "$2.writ-backup" || fail "cannot back up $2"
        backups="$backups $2"
    else
        new_files="$new_files $2"
    fi
    install -o root -g root -m "$3" "$1" "$2.writ-new" || fail "cannot write $2"
    mv -f "$2.writ-new" "$2" || fail "cannot write $2"
}

# Template paths become this install's paths, in one pass (placeholders first, so a value
# that contains another template path is not rewritten again).
render() {
    sed -e 's|/usr/local/bin/writ-principals|@WRIT_BIN@|g' \
        -e 's|/usr/bin/writ-principals|@WRIT_BIN@|g' \
        -e 's|/etc/writ/host.toml|@WRIT_CONFIG@|g' \
        -e 's|/var/lib/writ|@WRIT_STATE@|g' \
        -e 's|^AuthorizedPrincipalsCommandUser writ$|AuthorizedPrincipalsCommandUser @WRIT_USER@|' \
        "$1" |
        sed -e "s|@WRIT_BIN@|$bin_path|g" \
            -e "s|@WRIT_CONFIG@|$config_path|g" \
            -e "s|@WRIT_STATE@|$state_dir|g" \
            -e "s|@WRIT_USER@|$user|g"
}

# --- The user `AuthorizedPrincipalsCommandUser` names ----------------------------------
if ! id "$user" >/dev/null 2>&1; then
    [ -z "$root" ] || refuse "user $user does not exist (ROOT installs create no users: pass --user)"
    useradd --system --home-dir /var/lib/writ --no-create-home --shell /usr/sbin/nologin "$user" ||
        fail "cannot create user $user"
    user_created=1
    say "created system user $user"
fi

# --- 2. Binary, config, state, first sync ----------------------------------------------
make_dirs "$(dirname "$bin_path")" "$(dirname "$config_path")"
[ "$packaged" = 1 ] || put "$binary" "$bin_path" 0755
if [ ! -e "$config_path" ]; then
    name_expr='s|^# host_name = |&|' # unchanged: the system hostname
    [ -z "$host_name" ] || name_expr="s|^# host_name = .*|host_name = \"$host_name\"|"
    sed -e "s|^ca_url = .*|ca_url = \"$ca_url\"|" \
        -e "s|^state_dir = .*|state_dir = \"$state_dir\"|" \
        -e "$name_expr" \
        "$here/host.toml" >"$tmp/host.toml"
    put "$tmp/host.toml" "$config_path" 0644
elif [ -n "$config_edits" ]; then
    sed -e "$config_edits" "$config_path" >"$tmp/host.toml"
    put "$tmp/host.toml" "$config_path" 0644
    say "updated $config_path (ca_url/host_name as given; the rest kept)"
fi
if [ ! -d "$state_dir" ]; then
    make_dirs "$state_dir"
    state_created=1
fi

say "first sync from the CA (sshd is not pointed at $state_dir until it succeeds)"
"$bin_path" sync --config "$config_path" ||
    fail "the first sync failed (see above), so sshd's configuration was not changed. Check that the CA is reachable from this host (ca_url in $config_path), then run install.sh again."
for f in trusted_user_ca_keys revoked.krl revocations.json; do
    [ -s "$state_dir/$f" ] || fail "the first sync left no $state_dir/$f"
done

host_certs=""
if grep -q '^[[:space:]]*\[host_certificates\]' "$config_path"; then
    say "first host certificates from the CA ([host_certificates] in $config_path)"
    "$bin_path" host-cert --config "$config_path" >"$tmp/host-cert.out" ||
        fail "writ-principals host-cert failed (see above): check the host's token_file and that a role = \"host\" policy at the CA covers its names, then run install.sh again."
    cat "$tmp/host-cert.out"
    # "host certificate PATH (serial N) written|kept …"; one written for a key that had
    # none is ours to remove on rollback (a renewed one is as good as the one it replaced).
    while read -r _ a b path rest; do
        [ "$a $b" = "host certificate" ] || continue
        host_certs="$host_certs $path"
        case "$rest" in *"(no certificate yet)") new_files="$new_files $path" ;; esac
    done <"$tmp/host-cert.out"
    [ -n "$host_certs" ] || fail "writ-principals host-cert reported no certificate"
fi

# --- 3. Keeping the state current ------------------------------------------------------
if [ "$use_systemd" = 1 ]; then
    if [ "$packaged" = 0 ]; then # else the package's unit
        make_dirs "$(dirname "$unit_path")"
        render "$here/../systemd/$unit_name" >"$tmp/$unit_name"
        put "$tmp/$unit_name" "$unit_path" 0644
    fi
    if systemctl is-enabled --quiet "$unit_name" 2>/dev/null; then unit_was_enabled=1; fi
    systemctl daemon-reload || fail "systemctl daemon-reload failed"
    unit_enabled=1
    systemctl enable --now "$unit_name" || fail "systemctl enable --now $unit_name failed"
    systemctl try-restart "$unit_name" || fail "systemctl try-restart $unit_name failed"
    say "$unit_name keeps $state_dir current"
else
    say "no running systemd: nothing starts the sync service for you"
    if [ -d "$(dirname "$cron_path")" ]; then
        render "$here/writ-principals-sync.cron" >"$tmp/writ-principals-sync.cron"
        put "$tmp/writ-principals-sync.cron" "$cron_path" 0644
        say "installed $cron_path: cron runs \`writ-principals sync\` every minute"
    else
        say "no cron either ($(dirname "$cron_path") does not exist)"
    fi
    say "to keep $state_dir current from your init system or a supervisor, run in the foreground:"
    say "    $watch_cmd"
    say "(the revocation feed must stay younger than max_staleness, or every writ login is denied)"
fi

# --- 4. The sshd drop-in --------------------------------------------------------------
render "$here/sshd_config.d-writ.conf" >"$tmp/writ.conf"
if [ -n "$host_certs" ]; then
    printf '# This host proves itself to clients with certificates from the CA (writ-principals host-cert).\n' >>"$tmp/writ.conf"
    for c in $host_certs; do printf 'HostCertificate %s\n' "$c" >>"$tmp/writ.conf"; done
fi
# The candidate: the current configuration with the new drop-in included ahead of it.
printf 'Include %s\nInclude %s\n' "$tmp/writ.conf" "$sshd_config" >"$tmp/sshd_config.candidate"
"$sshd" -t -f "$tmp/sshd_config.candidate" ||
    fail "sshd -t rejects the configuration with the writ drop-in; nothing was installed into sshd's configuration"

make_dirs "$dropin_dir"
put "$tmp/writ.conf" "$dropin" 0644
"$sshd" -t -f "$sshd_config" || fail "sshd -t -f $sshd_config fails with $dropin in place"
# The drop-in takes effect only if the main configuration includes it before setting these
# keywords itself (sshd uses the first value it reads).
effective="$("$sshd" -T -f "$sshd_config" 2>/dev/null)" || fail "sshd -T -f $sshd_config failed"
host_cert_lines=""
for c in $host_certs; do host_cert_lines="$host_cert_lines
hostcertificate $c"; done
printf '%s\n' "$host_cert_lines" | while read -r line; do
    [ -z "$line" ] || printf '%s\n' "$effective" | grep -qxF "$line" ||
        { warn "$dropin is not in effect (sshd -T shows no \"$line\")"; exit 1; }
done || fail "the HostCertificate lines of $dropin are not in effect: $sshd_config must include $dropin_dir/*.conf"
for line in \
    "trustedusercakeys $state_dir/trusted_user_ca_keys" \
    "revokedkeys $state_dir/revoked.krl" \
    "authorizedprincipalscommand $bin_path check --config $config_path -- %u %k" \
    "authorizedprincipalscommanduser $user"; do
    printf '%s\n' "$effective" | grep -qxF "$line" ||
        fail "$dropin is not in effect (sshd -T shows no \"$line\"): $sshd_config must include $dropin_dir/*.conf before setting TrustedUserCAKeys, RevokedKeys or AuthorizedPrincipalsCommand itself"
done

# Reload. The pid file is whatever this sshd configuration names.
if [ "$reload" = 0 ]; then
    say "not reloading sshd (--no-reload): reload it to admit writ certificates"
elif [ "$use_systemd" = 1 ] && [ "$sshd_config" = /etc/ssh/sshd_config ]; then
    unit=""
    for u in ssh.service sshd.service; do
        if systemctl cat "$u" >/dev/null 2>&1; then unit="$u"; break; fi
    done
    [ -n "$unit" ] || fail "found neither ssh.service nor sshd.service to reload"
    if systemctl is-active --quiet "$unit"; then
        systemctl reload "$unit" || fail "systemctl reload $unit failed"
        say "reloaded $unit"
    else
        say "$unit is not running; it reads the new configuration when it starts"
    fi
else
    pid_file="$(printf '%s\n' "$effective" | sed -n 's/^pidfile //p')"
    pid=""
    if [ -n "$pid_file" ] && [ -f "$pid_file" ]; then pid="$(cat "$pid_file")"; fi
    case "$pid" in "" | *[!0-9]*) pid="" ;; esac
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -HUP "$pid" || fail "kill -HUP $pid (sshd, from $pid_file) failed"
        say "reloaded sshd (SIGHUP to pid $pid from $pid_file)"
    else
        say "sshd does not appear to be running (no live pid in ${pid_file:-its PidFile}):"
        say "reload or start it yourself to admit writ certificates"
    fi
fi

committed=1
for f in $backups; do rm -f "$f.writ-backup"; done
say "writ-principals installed: $bin_path, $config_path, $state_dir, $dropin"
