#!/bin/sh
# Install hookrelay as a systemd service.
#
#   packaging/install.sh [--bin PATH] [--no-build]
#
# Environment:
#   DESTDIR       staging root prepended to every path (default: none)
#   PREFIX        where the binary, units and docs go (default: /usr)
#   UNITDIR       systemd unit directory (default: $PREFIX/lib/systemd/system)
#   SYSCONFDIR    configuration root (default: /etc)
#   HOOKRELAY_BIN the binary to install, same as --bin
#                 (default: target/release/hookrelay, built if missing)
#
# Installs:
#   $PREFIX/bin/hookrelay
#   $UNITDIR/hookrelay.service, $UNITDIR/hookrelay.socket
#   $SYSCONFDIR/hookrelay/hookrelay.toml   only if absent; else hookrelay.toml.new
#   $SYSCONFDIR/hookrelay/admin.tokens     no tokens yet (comments only), mode 0600,
#                                          only if absent
#   $PREFIX/share/doc/hookrelay/           SERVICE.md, CONFIG.md, FLEET.md, the low-port drop-in
#   $PREFIX/share/man/man1/hookrelay*.1    the man pages (`man hookrelay`)
#
# It starts nothing: the next steps are printed at the end.
set -eu

usage() {
    sed -n '2,/^set -eu$/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

bin="${HOOKRELAY_BIN:-}"
build=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) [ $# -ge 2 ] || { echo "install.sh: --bin needs a path" >&2; exit 2; }
               bin="$2"; shift 2 ;;
        --bin=*) bin="${1#--bin=}"; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done

src="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr}"
UNITDIR="${UNITDIR:-$PREFIX/lib/systemd/system}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
confdir="$SYSCONFDIR/hookrelay"
docdir="$PREFIX/share/doc/hookrelay"

if [ -z "$bin" ]; then
    bin="$src/target/release/hookrelay"
    if [ ! -x "$bin" ]; then
        if [ "$build" = no ]; then
            echo "install.sh: $bin is missing and --no-build was given" >&2
            exit 1
        fi
        echo "== cargo build --release --locked"
        (cd "$src" && cargo build --release --locked)
    fi
fi
if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
    echo "install.sh: $bin is not an executable file" >&2
    exit 1
fi

echo "== installing into ${DESTDIR:-/} (prefix $PREFIX)"

install -d -m 0755 "$DESTDIR$PREFIX/bin" "$DESTDIR$UNITDIR" "$DESTDIR$docdir"
install -m 0755 "$bin" "$DESTDIR$PREFIX/bin/hookrelay"
echo "   $PREFIX/bin/hookrelay"

# The unit names /usr/bin/hookrelay and /etc/hookrelay; follow PREFIX and
# SYSCONFDIR when they differ.
sed -e "s#/usr/bin/hookrelay#$PREFIX/bin/hookrelay#g" \
    -e "s#/etc/hookrelay#$confdir#g" \
    "$src/systemd/hookrelay.service" > "$DESTDIR$UNITDIR/hookrelay.service.tmp"
chmod 0644 "$DESTDIR$UNITDIR/hookrelay.service.tmp"
mv "$DESTDIR$UNITDIR/hookrelay.service.tmp" "$DESTDIR$UNITDIR/hookrelay.service"
install -m 0644 "$src/systemd/hookrelay.socket" "$DESTDIR$UNITDIR/hookrelay.socket"
echo "   $UNITDIR/hookrelay.service"
echo "   $UNITDIR/hookrelay.socket"

install -m 0644 "$src/systemd/hookrelay-lowport.conf" "$DESTDIR$docdir/hookrelay-lowport.conf"
install -m 0644 "$src/docs/SERVICE.md" "$DESTDIR$docdir/SERVICE.md"
install -m 0644 "$src/docs/CONFIG.md" "$DESTDIR$docdir/CONFIG.md"
install -m 0644 "$src/docs/FLEET.md" "$DESTDIR$docdir/FLEET.md"
echo "   $docdir/"
mandir="$PREFIX/share/man/man1"
install -d -m 0755 "$DESTDIR$mandir"
for page in "$src"/packaging/man/*.1; do
    install -m 0644 "$page" "$DESTDIR$mandir/$(basename "$page")"
done
echo "   $mandir/hookrelay*.1"

# The service reads the config as a dynamic user: 0644. A config already in
# place is the operator's and is never replaced.
install -d -m 0755 "$DESTDIR$confdir"
if [ -e "$DESTDIR$confdir/hookrelay.toml" ]; then
    install -m 0644 "$src/packaging/hookrelay.toml" "$DESTDIR$confdir/hookrelay.toml.new"
    echo "   $confdir/hookrelay.toml exists, kept; the shipped one is hookrelay.toml.new"
else
    install -m 0644 "$src/packaging/hookrelay.toml" "$DESTDIR$confdir/hookrelay.toml"
    echo "   $confdir/hookrelay.toml"
fi

# LoadCredential= fails the start when its source is missing, so the tokens
# file always exists; systemd reads it as root and hands the service a copy.
if [ -e "$DESTDIR$confdir/admin.tokens" ]; then
    echo "   $confdir/admin.tokens exists, kept"
else
    install -m 0600 "$src/packaging/admin.tokens" "$DESTDIR$confdir/admin.tokens"
    echo "   $confdir/admin.tokens (no tokens yet, 0600)"
fi

cat <<NEXT

Next steps:
  1. Edit $confdir/hookrelay.toml: add a route and its targets, then
       $PREFIX/bin/hookrelay check-config --config $confdir/hookrelay.toml
  2. Put an admin API token in $confdir/admin.tokens:
       openssl rand -hex 24 >> $confdir/admin.tokens
  3. Start the service, and start it at boot:
       systemctl daemon-reload
       systemctl enable --now hookrelay
  4. Watch it:
       systemctl status hookrelay
       journalctl -u hookrelay -f
NEXT
if [ -n "$DESTDIR" ]; then
    echo "(Installed under DESTDIR=$DESTDIR: the paths above are as seen from the target system.)"
fi
