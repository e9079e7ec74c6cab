#!/bin/bash
# Provision a Debian 12 machine for crwatch. Run as root; idempotent (a second
# run only checks things and takes about 2 s). Works from any cwd: everything
# it makes lives in the repo (.venv, .deps), nothing outside it except the
# Debian packages below and the tracefs mount.
#
#   .venv/                 virtualenv from /usr/bin/python3 (sees Debian's bcc), with
#                          _crwatch_fdwalk built by Debian's gcc from tracker/fdwalk.c,
#                          and bin/crwatch the front end built from api/cli/launcher.c
#   .deps/kernel-headers/  merged header tree for bcc (only without /lib/modules/*/build)
#   .deps/criu-apt/        private apt state used to fetch CRIU from Debian sid
#   .deps/criu-root/       those .debs unpacked (never installed into the system)
#   .deps/bin/criu         wrapper running criu-root's criu with criu-root's libs
#   .deps/iptables-root/   Debian sid's iptables unpacked (same private apt state)
#   .deps/iptables-bin/    iptables, ip6tables, *-restore, *-save wrappers (xtables-nft-multi);
#                          never on PATH by default: the tests put it there to judge and dump
#                          in an environment where CRIU locks TCP with iptables
#   .deps/env              KEY=VALUE lines: CRWATCH_CRIU, BCC_KERNEL_SOURCE
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps
VENV=$ROOT/.venv
SYSPY=/usr/bin/python3        # never the pyenv python that comes first in PATH
CRIU_MIN=4.2
KREL=$(uname -r)

say()  { printf 'setup: %s\n' "$*"; }
warn() { printf '\nsetup: WARNING: %s\n\n' "$*" >&2; }
die()  { printf '\nsetup: ERROR: %s\n\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, mounts tracefs, runs criu)"
mkdir -p "$DEPS"

# ---------------------------------------------------------------- packages
# python3-venv: venv+ensurepip for Debian's python; python3-bpfcc: the bcc
# binding (PyPI's "bcc" is unrelated); make: the Makefile; iproute2: criu runs
# `ip` when it dumps network namespaces; procps/util-linux: ps, mountpoint,
# flock (base packages, listed so a trimmed image still gets them);
# chromium: the dashboard's tests drive it headless (Playwright, executable_path).
# lsof: bench/check_bench.py times `crwatch check` against `lsof -p`.
# btrfs-progs: mkfs.btrfs for the agreement tests of btrfs mounts CRIU refuses.
# No nftables/iptables package: criu's `--network-lock nftables` uses
# libnftables in-process (part of the private criu closure below); iptables
# is unpacked privately (.deps/iptables-bin) for the tests of CRIU's default lock.
PKGS=(python3-venv python3-dev gcc python3-bpfcc make iproute2 procps util-linux chromium lsof btrfs-progs)
# bcc compiles against kernel headers; without this kernel's own, use Debian's.
[ -e "/lib/modules/$KREL/build" ] || PKGS+=(linux-headers-amd64)

missing=()
while read -r name status; do
    [ "$status" = installed ] || missing+=("$name")
done < <(for p in "${PKGS[@]}"; do
    printf '%s %s\n' "$p" "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
done)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log=$DEPS/apt-install.log
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "apt-get install failed (full log: $log)"; }
else
    say "Debian packages present"
fi

# ---------------------------------------------------------------- tracefs
# bcc reads tracepoint formats from here; it is not mounted at boot here.
if ! mountpoint -q /sys/kernel/tracing; then
    say "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
fi

# ---------------------------------------------------------------- venv
# --system-site-packages so Debian's bcc (dist-packages) is importable.
if ! grep -qs '^include-system-site-packages = true' "$VENV/pyvenv.cfg" \
   || ! grep -qs '^home = /usr/bin$' "$VENV/pyvenv.cfg" \
   || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "creating virtualenv .venv from $SYSPY"
    rm -rf "$VENV"
    "$SYSPY" -m venv --system-site-packages "$VENV"
fi
pip_q() {  # quiet pip; full output only on failure
    local log rc=0
    log=$(mktemp)
    "$VENV/bin/pip" -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
    if [ $rc != 0 ]; then cat "$log" >&2; fi
    rm -f "$log"
    return $rc
}
STAMP=$VENV/.crwatch-pip-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    say "pip install -r requirements.lock, -e ."
    rm -f "$STAMP"
    pip_q install -r requirements.lock || die "pip install -r requirements.lock failed"
    pip_q install --no-deps -e . || die "pip install --no-deps -e . failed"
    echo "$want" > "$STAMP"
else
    say "python packages up to date"
fi

# ---------------------------------------------------------------- compiled fd walk
# tracker/fdwalk.c: a process's fd links and fdinfo records in one call (Proc.fds walks
# in Python without it). Built with Debian's gcc against the venv's Python, rebuilt
# when the source or the interpreter changes.
FDWALK_SRC=$ROOT/tracker/fdwalk.c
read -r FDWALK_SITE FDWALK_SUFFIX FDWALK_INCLUDE < <("$VENV/bin/python" -c \
    'import sysconfig as s; print(s.get_paths()["purelib"], s.get_config_var("EXT_SUFFIX"), s.get_paths()["include"])')
FDWALK=$FDWALK_SITE/_crwatch_fdwalk$FDWALK_SUFFIX
FDWALK_STAMP=$VENV/.crwatch-fdwalk-stamp
want=$(cat "$FDWALK_SRC" "$VENV/bin/python" | sha256sum | cut -d' ' -f1)
if [ ! -e "$FDWALK" ] || [ "$(cat "$FDWALK_STAMP" 2>/dev/null)" != "$want" ]; then
    say "building _crwatch_fdwalk from tracker/fdwalk.c"
    rm -f "$FDWALK_STAMP"
    gcc -O2 -Wall -Wextra -Wno-missing-field-initializers -shared -fPIC \
        -I"$FDWALK_INCLUDE" "$FDWALK_SRC" -o "$FDWALK.tmp" || die "building _crwatch_fdwalk failed"
    mv "$FDWALK.tmp" "$FDWALK"
    echo "$want" > "$FDWALK_STAMP"
else
    say "_crwatch_fdwalk up to date"
fi

# ---------------------------------------------------------------- the crwatch command
# api/cli/launcher.c: what `crwatch` runs. It has a running service answer `crwatch
# check` on its unix socket and runs the Python command line (`python -P -m api.cli`)
# for everything else. It replaces pip's console script of the same name, which pip
# writes again at each install: a run of set-up puts it back. Rebuilt when its source,
# its build or the names it is built with change.
LAUNCHER=$VENV/crwatch-launcher
LAUNCHER_STAMP=$VENV/.crwatch-launcher-stamp
want=$(cat api/cli/launcher.c scripts/build-launcher.sh api/service/settings.py \
           tracker/criu/facts_cache.py "$VENV/bin/python" | sha256sum | cut -d' ' -f1)
if [ ! -x "$LAUNCHER" ] || [ "$(cat "$LAUNCHER_STAMP" 2>/dev/null)" != "$want" ]; then
    say "building the crwatch front end from api/cli/launcher.c"
    rm -f "$LAUNCHER_STAMP"
    bash scripts/build-launcher.sh "$LAUNCHER" "$VENV/bin/python" \
        || die "building the crwatch front end failed"
    echo "$want" > "$LAUNCHER_STAMP"
fi
if ! cmp -s "$LAUNCHER" "$VENV/bin/crwatch"; then
    say "installing the crwatch front end as .venv/bin/crwatch"
    cp "$LAUNCHER" "$VENV/bin/crwatch.tmp"
    mv "$VENV/bin/crwatch.tmp" "$VENV/bin/crwatch"
else
    say "crwatch front end up to date"
fi

# ---------------------------------------------------------------- bcc headers
BCC_SRC=
if [ ! -e "/lib/modules/$KREL/build" ]; then
    KH=$DEPS/kernel-headers
    arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    common_dir=${arch_dir%-amd64}-common
    [ -n "$arch_dir" ] && [ -d "$common_dir" ] \
        || die "no /usr/src/linux-headers-*-amd64 and -common (is linux-headers-amd64 installed?)"
    if [ "$(cat "$KH/.crwatch-src" 2>/dev/null)" != "$common_dir $arch_dir" ]; then
        say "building merged kernel header tree .deps/kernel-headers from ${arch_dir##*/}"
        rm -rf "$KH" "$KH.tmp"
        mkdir -p "$KH.tmp"
        # Debian splits the tree in two: arch-independent -common and the
        # generated -amd64 half; bcc wants one tree. A symlink farm is enough.
        cp -rs "$common_dir/." "$KH.tmp/"
        cp -rsf "$arch_dir/." "$KH.tmp/"
        echo "$common_dir $arch_dir" > "$KH.tmp/.crwatch-src"
        mv "$KH.tmp" "$KH"
        rm -f "$DEPS/.bcc-verified"
    fi
    BCC_SRC=$KH
fi

# Compile and attach a trivial tracepoint program. Only a warning on failure:
# the audit itself does not need bcc. Re-checked only when something changed.
bcc_key="$KREL ${BCC_SRC:-/lib/modules/$KREL/build} $(cat "$STAMP")"
if [ "$(cat "$DEPS/.bcc-verified" 2>/dev/null)" != "$bcc_key" ]; then
    say "verifying bcc (compile + attach a tracepoint program)"
    if out=$(BCC_KERNEL_SOURCE=$BCC_SRC "$VENV/bin/python" - 2>&1 <<'EOF'
import os
from bcc import BPF
b = BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }")
os.getppid()
b.cleanup()
EOF
    ); then
        echo "$bcc_key" > "$DEPS/.bcc-verified"
        say "bcc works"
    else
        rm -f "$DEPS/.bcc-verified"
        warn "bcc verification FAILED (eBPF probes will not work; the audit still does):
$(printf '%s\n' "$out" | tail -n 15)"
    fi
fi

# ---------------------------------------------------------------- CRIU
criu_version() {  # prints e.g. 4.2.1, or nothing
    "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -n1 || true
}
version_ge() { [ "$(printf '%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
criu_usable() {  # $1 = path; ok when version >= CRIU_MIN and `criu check` passes
    local v
    v=$(criu_version "$1")
    [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" && "$1" check >/dev/null 2>&1
}

private_apt() {  # the apt-get command line of the private sid state in $1
    local aptd=$1
    PRIVATE_APT=(apt-get -q
        -o Dir::Etc::sourcelist="$aptd/sources.list" -o Dir::Etc::sourceparts=-
        -o Dir::State="$aptd/state" -o Dir::State::lists="$aptd/lists"
        -o Dir::State::status="$aptd/empty-status"
        -o Dir::Cache="$aptd/cache" -o Dir::Cache::archives="$aptd/archives"
        -o APT::Sandbox::User=root)
}

prepare_private_apt() {  # a private apt state for sid in $1 (sources, lists, empty status)
    local aptd=$1 mirror
    # The system's Debian mirror (deb822 .sources or one-line .list format).
    mirror=$("$SYSPY" - <<'EOF'
import glob, re
uris = []
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and \
                "main" in fields.get("Components", "").split():
            uris += [(u, fields.get("Suites", "").split()) for u in fields.get("URIs", "").split()]
for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line.strip())
        if m and "main" in m.group(3).split():
            uris.append((m.group(1), [m.group(2)]))
# The main archive: not -security/-updates/-backports, and a Debian URI.
for uri, suites in uris:
    if any("-" not in s for s in suites) and "debian" in uri and "security" not in uri:
        print(uri.rstrip("/"))
        break
else:
    print("http://deb.debian.org/debian")
EOF
)
    say "private apt state for Debian sid ($mirror) in ${aptd#$ROOT/} (system untouched)"
    mkdir -p "$aptd/lists/partial" "$aptd/archives/partial" "$aptd/cache" "$aptd/state"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
        > "$aptd/sources.list"
    # Empty dpkg status: apt then downloads the whole closure, libc included,
    # so the unpacked root is self-contained.
    : > "$aptd/empty-status"
}

fetch_private_criu() {
    local aptd=$DEPS/criu-apt root=$DEPS/criu-root
    prepare_private_apt "$aptd"
    say "fetching CRIU from Debian sid into .deps"
    private_apt "$aptd"
    local apt=("${PRIVATE_APT[@]}")
    "${apt[@]}" update >"$aptd/update.log" 2>&1 \
        || { cat "$aptd/update.log" >&2; die "private apt-get update (sid) failed"; }
    rm -f "$aptd"/archives/*.deb
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --download-only -y \
        --no-install-recommends criu >"$aptd/install.log" 2>&1 \
        || { cat "$aptd/install.log" >&2; die "downloading criu from sid failed"; }
    rm -rf "$root" "$root.tmp"
    mkdir -p "$root.tmp"
    local deb n=0
    for deb in "$aptd"/archives/*.deb; do
        dpkg -x "$deb" "$root.tmp"
        n=$((n + 1))
    done
    mv "$root.tmp" "$root"
    say "unpacked $n packages into .deps/criu-root"

    local ld
    ld=$(cd "$root" && ls usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
        lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib64/ld-linux-x86-64.so.2 2>/dev/null | head -n1 || true)
    [ -n "$ld" ] && [ -x "$root/usr/sbin/criu" ] || die "unpacked criu root lacks ld.so or usr/sbin/criu"
    mkdir -p "$DEPS/bin"
    # Run sid's criu with sid's loader and libraries; nothing leaks into the
    # environment of the programs criu itself starts. Relative to the wrapper,
    # so the checkout can move.
    cat > "$DEPS/bin/criu.tmp" <<EOF
#!/bin/sh
# Generated by scripts/setup.sh: CRIU from Debian sid, unpacked in .deps/criu-root.
R=\$(dirname "\$(readlink -f "\$0")")/../criu-root
exec "\$R/$ld" --library-path "\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu" "\$R/usr/sbin/criu" "\$@"
EOF
    chmod +x "$DEPS/bin/criu.tmp"
    mv "$DEPS/bin/criu.tmp" "$DEPS/bin/criu"
}

CRIU=
sys_criu=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v criu || true)
if [ -n "$sys_criu" ] && criu_usable "$sys_criu"; then
    CRIU=$sys_criu
elif [ -x "$DEPS/bin/criu" ] && criu_usable "$DEPS/bin/criu"; then
    CRIU=$DEPS/bin/criu
else
    [ -z "$sys_criu" ] || say "system criu $sys_criu ($(criu_version "$sys_criu" || true)) unusable; using a private one"
    fetch_private_criu
    CRIU=$DEPS/bin/criu
    v=$(criu_version "$CRIU")
    [ -n "$v" ] || die "$CRIU --version prints no version: $("$CRIU" --version 2>&1 | head -n3)"
    version_ge "$v" "$CRIU_MIN" || die "CRIU from sid is $v, need >= $CRIU_MIN"
    "$CRIU" check >/dev/null 2>&1 || die "'criu check' fails for CRIU $v:
$("$CRIU" check 2>&1 | tail -n 15)"
fi
say "criu $(criu_version "$CRIU") at $CRIU: check passed"

# ---------------------------------------------------------------- iptables (tests only)
# The tests judge and dump TCP connections both without iptables on PATH (CRIU
# then needs --network-lock nftables) and with it (CRIU's default lock). Debian
# sid's iptables, from the same private apt state as CRIU, unpacked and run
# through xtables-nft-multi with its own loader, libraries and extensions.
IPT_TOOLS=(iptables ip6tables iptables-restore ip6tables-restore iptables-save ip6tables-save)
fetch_private_iptables() {
    local aptd=$DEPS/criu-apt root=$DEPS/iptables-root bin=$DEPS/iptables-bin
    [ -s "$aptd/sources.list" ] || prepare_private_apt "$aptd"
    say "fetching iptables from Debian sid into .deps/iptables-root (private apt state)"
    private_apt "$aptd"
    local apt=("${PRIVATE_APT[@]}") archives
    archives=$(mktemp -d "$DEPS/iptables-archives.XXXXXX")
    mkdir -p "$archives/partial"
    { "${apt[@]}" update && DEBIAN_FRONTEND=noninteractive "${apt[@]}" \
        -o Dir::Cache::archives="$archives" install --download-only -y \
        --no-install-recommends iptables; } >"$aptd/iptables.log" 2>&1 \
        || { cat "$aptd/iptables.log" >&2; die "downloading iptables from sid failed"; }
    rm -rf "$root" "$root.tmp"
    mkdir -p "$root.tmp"
    local deb
    for deb in "$archives"/*.deb; do
        dpkg -x "$deb" "$root.tmp"
    done
    rm -rf "$archives"
    [ -x "$root.tmp/usr/sbin/xtables-nft-multi" ] || die "the iptables package lacks xtables-nft-multi"
    mv "$root.tmp" "$root"
    rm -rf "$bin"
    mkdir -p "$bin"
    local tool
    for tool in "${IPT_TOOLS[@]}"; do
        # xtables-nft-multi runs the tool its first argument names.
        cat > "$bin/$tool" <<WRAPPER
#!/bin/sh
# Generated by scripts/setup.sh: Debian sid's iptables (nf_tables backend) from .deps/iptables-root.
R=\$(dirname "\$(readlink -f "\$0")")/../iptables-root
L=\$R/usr/lib/x86_64-linux-gnu
XTABLES_LIBDIR=\$L/xtables exec "\$L/ld-linux-x86-64.so.2" --library-path "\$L" "\$R/usr/sbin/xtables-nft-multi" $tool "\$@"
WRAPPER
        chmod +x "$bin/$tool"
    done
}
if [ -x "$DEPS/iptables-bin/iptables-restore" ] && "$DEPS/iptables-bin/iptables" -V >/dev/null 2>&1; then
    say "private iptables present"
else
    fetch_private_iptables
    "$DEPS/iptables-bin/iptables" -w -L -n >/dev/null 2>&1 \
        || die "the private iptables does not run: $("$DEPS/iptables-bin/iptables" -w -L -n 2>&1 | tail -n 3)"
    say "$("$DEPS/iptables-bin/iptables" -V) in .deps/iptables-bin"
fi

# ---------------------------------------------------------------- .deps/env
envline() {  # KEY=VALUE, single-quoted only when the value needs it
    case $2 in
        *[!A-Za-z0-9_./:+,=@-]*) printf "%s='%s'\n" "$1" "${2//\'/\'\\\'\'}" ;;
        *) printf '%s=%s\n' "$1" "$2" ;;
    esac
}
{
    envline CRWATCH_CRIU "$CRIU"
    [ -z "$BCC_SRC" ] || envline BCC_KERNEL_SOURCE "$BCC_SRC"
} > "$DEPS/env.tmp"
mv "$DEPS/env.tmp" "$DEPS/env"
say "done (.deps/env written)"
