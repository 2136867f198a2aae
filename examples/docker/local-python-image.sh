#!/usr/bin/env bash
# For machines that cannot pull from a registry: builds a stand-in for `python:3.11-slim` from
# this machine's own Debian python3.11 (interpreter, its shared libraries, the standard library)
# and a static busybox for /bin/sh, then imports it as `python:3.11-slim`.
#   examples/docker/local-python-image.sh   # needs python3.11 and busybox-static from Debian
set -euo pipefail
python=/usr/bin/python3.11
[ -x "$python" ] || { echo "needs Debian's python3.11 at $python" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/usr/bin" "$root/usr/lib" "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for tool in sh cp mkdir ls cat env; do ln -s busybox "$root/bin/$tool"; done
cp "$python" "$root/usr/bin/python3.11"
ln -s python3.11 "$root/usr/bin/python3"
# The interpreter's shared libraries and the dynamic loader, at the paths it expects.
for lib in $(ldd "$python" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp -r /usr/lib/python3.11 "$root/usr/lib/"
# Extension modules' own libraries (hashlib, json, ...): copy whatever they link against.
for so in "$root"/usr/lib/python3.11/lib-dynload/*.so; do
    for lib in $(ldd "$so" 2>/dev/null | grep -o '/[^ ]*'); do
        [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
    done
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/bin:/bin' -c 'CMD ["python3"]' - python:3.11-slim
docker run --rm python:3.11-slim python3 -c 'import hashlib, json, csv, math; print("python:3.11-slim stand-in works")'
