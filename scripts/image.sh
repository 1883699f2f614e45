#!/usr/bin/env bash
# Builds mpp's container image from a binary built on this machine, with `Containerfile` and
# buildah; no image registry is needed. `make image` runs it on the shipped binary (`make dist`); the
# container test (tests/container.rs) on its own debug binary.
#
#   scripts/image.sh BINARY [NAME]     NAME defaults to localhost/mpp:<the binary's version>
#
# The image holds the stripped binary, the shared libraries `ldd` lists for it, glibc's
# name-service configuration (`nsswitch.conf`: /etc/hosts, then DNS; the runtime mounts
# /etc/hosts and /etc/resolv.conf), the CA bundle and an /etc/passwd naming the unprivileged
# user 65534. The label org.opencontainers.image.source is Cargo.toml's `repository`, else the
# git remote `origin`; .revision is git's HEAD (`-dirty` when tracked files changed);
# IMAGE_SOURCE and IMAGE_REVISION override them. .version is the binary's (`mpp --version`).
set -euo pipefail

binary=${1:?usage: scripts/image.sh BINARY [NAME]}
root=$(cd "$(dirname "$0")/.." && pwd)

for tool in buildah strip ldd flock; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "image: \`$tool\` is not installed; install what images need: apt-get install -y podman buildah runc binutils (or \`make deps\` as root)" >&2
        exit 1
    fi
done
[ -x "$binary" ] || { echo "image: $binary is not an executable; build it first (make release)" >&2; exit 1; }

version=$("$binary" --version | awk 'NR == 1 {print $2}')
name=${2:-localhost/mpp:$version}
source=${IMAGE_SOURCE:-$(sed -nE 's/^repository *= *"(.*)"/\1/p' "$root/Cargo.toml")}
source=${source:-$(git -C "$root" remote get-url origin 2>/dev/null || true)}
if [ -z "$source" ]; then
    echo "image: nothing names the source repository (no \`repository\` in Cargo.toml, no git remote 'origin'); set IMAGE_SOURCE=<its URL>" >&2
    exit 1
fi
source=$(sed -E 's#^git@([^:]+):#https://\1/#; s#\.git$##' <<<"$source")
revision=${IMAGE_REVISION:-}
if [ -z "$revision" ]; then
    revision=$(git -C "$root" rev-parse HEAD 2>/dev/null) || {
        echo "image: not a git checkout; set IMAGE_REVISION=<the source revision>" >&2
        exit 1
    }
    git -C "$root" diff --quiet HEAD -- 2>/dev/null || revision="$revision-dirty"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
mkdir -p "$rootfs/etc/ssl/certs"

# Copies the shared libraries `file` loads to the same paths in the image.
copy_libraries() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r library; do
        [ -e "$rootfs$library" ] || cp --dereference --parents "$library" "$rootfs/"
    done
}

strip -o "$rootfs/mpp" "$binary"
copy_libraries "$rootfs/mpp"
# glibc before 2.34 loads the `files` and `dns` sources from these modules; later ones have
# them built in and keep the modules as empty stubs.
libc_dir=$(dirname "$(ldd "$binary" | awk '$1 == "libc.so.6" {print $3}')")
for module in libnss_files.so.2 libnss_dns.so.2; do
    if [ -e "$libc_dir/$module" ]; then
        cp --dereference --parents "$libc_dir/$module" "$rootfs/"
        copy_libraries "$libc_dir/$module"
    fi
done
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

certificates=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$certificates" ]; then
    echo "image: $certificates is missing; install it: apt-get install -y ca-certificates" >&2
    exit 1
fi
cp "$certificates" "$rootfs/etc/ssl/certs/"

# Builds of identical contents share their layers in the image store: one build's image removed
# while another commits takes the shared layer away from it ("layer not known"). So builds, and
# the container test's removals, take this lock in turn (buildah issue 5674).
# One lock per user: each user's images are in a store of their own.
exec 9>"${TMPDIR:-/tmp}/mpp-image-$(id -u).lock"
flock 9
buildah build --quiet --file "$root/Containerfile" --tag "$name" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" \
    "$context" >/dev/null
echo "image: built $name (mpp $version, $revision)" >&2
