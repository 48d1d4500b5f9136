#!/bin/sh
# Build hookrelay's Debian package and lint it.
#
#   packaging/check.sh [--no-install]
#
# Builds the .deb with cargo-deb from the dev profile, which the tests have
# mostly built already (the layout, scripts and metadata lintian judges are
# those of the release package; `cargo deb` builds the package that ships,
# with LTO, which takes several minutes more), runs `lintian --pedantic` on
# it, and fails on any
# error, and on any warning, info or pedantic tag not listed under
# "Accepted" below, each with the reason it is accepted.
#
# lintian (apt) and cargo-deb (`cargo install cargo-deb --locked`) are
# installed when missing, unless --no-install is given.
set -eu

install=yes
case "${1:-}" in
    --no-install) install=no ;;
    "") ;;
    *) echo "check.sh: unknown argument: $1" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

if ! command -v lintian >/dev/null 2>&1; then
    [ "$install" = yes ] || { echo "check.sh: lintian is not installed" >&2; exit 1; }
    echo "== apt-get install lintian"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends lintian
fi
if ! cargo deb --version >/dev/null 2>&1; then
    [ "$install" = yes ] || { echo "check.sh: cargo-deb is not installed" >&2; exit 1; }
    echo "== cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

out="target/debian-check"
rm -rf "$out"
mkdir -p "$out"
echo "== cargo deb --profile dev"
cargo deb --locked --profile dev --output "$out/"
deb=$(ls "$out"/hookrelay_*.deb)

# Accepted: each tag lintian may report that is not an error, and why.
accepted='
initial-upload-closes-no-bugs        hookrelay is not uploaded to Debian, so its first changelog entry closes no ITP bug.
non-standard-file-perm               etc/hookrelay/admin.tokens holds bearer tokens: 0600, root, on purpose.
hardening-no-fortify-functions       a Rust binary calls no fortifiable libc functions (_FORTIFY_SOURCE is for C).
no-md5sums-control-file              cargo-deb writes no md5sums file; it is optional (info).
package-supports-alternative-init-but-no-init.d-script  systemd only: the service is Type=notify with a watchdog and socket activation.
spelling-error-in-binary             strings of the binary: config keys ("egress.allow to permit it") and dependencies, not prose.
'
accept_tags=$(printf '%s\n' "$accepted" | sed -n 's/^\([a-z0-9.-]*\) .*/\1/p')

echo "== lintian --pedantic $deb"
report="$out/lintian.txt"
# lintian exits non-zero on errors; the report is judged below either way.
lintian --pedantic --info --display-level '>=pedantic' "$deb" >"$report" 2>&1 || true
cat "$report"

status=0
while IFS= read -r line; do
    case "$line" in
        [EWIPX]:*) ;;
        *) continue ;;
    esac
    tag=$(printf '%s\n' "$line" | sed -n 's/^[EWIPX]: [^ ]*: \([^ ]*\).*/\1/p')
    kind=$(printf '%s' "$line" | cut -c1)
    if [ "$kind" = E ]; then
        echo "check.sh: lintian error: $line" >&2
        status=1
        continue
    fi
    accepted_tag=no
    for t in $accept_tags; do
        [ "$t" = "$tag" ] && accepted_tag=yes
    done
    # Only the tokens file may have its own mode.
    if [ "$tag" = non-standard-file-perm ]; then
        case "$line" in
            *"[etc/hookrelay/admin.tokens]"*) ;;
            *) accepted_tag=no ;;
        esac
    fi
    if [ "$accepted_tag" = no ]; then
        echo "check.sh: not accepted: $line" >&2
        status=1
    fi
done <"$report"

# The package carries what it should, whatever lintian thinks of it.
contents="$out/contents.txt"
dpkg-deb --contents "$deb" >"$contents"
for path in ./usr/bin/hookrelay ./usr/share/man/man1/hookrelay.1.gz \
    ./usr/share/man/man1/hookrelay-check-config.1.gz \
    ./usr/share/doc/hookrelay/changelog.Debian.gz ./usr/share/doc/hookrelay/copyright \
    ./usr/lib/systemd/system/hookrelay.service ./etc/hookrelay/hookrelay.toml; do
    if ! grep -q " $path\$" "$contents"; then
        echo "check.sh: the package lacks $path" >&2
        status=1
    fi
done
# Each systemd step once: a second #DEBHELPER# would run them twice.
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst >"$out/postinst"
for unit in hookrelay.service hookrelay.socket; do
    n=$(grep -c "deb-systemd-helper unmask $unit" "$out/postinst" || true)
    if [ "$n" -ne 1 ]; then
        echo "check.sh: postinst unmasks $unit $n times, not once" >&2
        status=1
    fi
done

if [ "$status" -eq 0 ]; then
    echo "== $deb: no lintian error; accepted where reported:" $accept_tags
fi
exit "$status"
