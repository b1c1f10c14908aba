#!/usr/bin/env bash
# install.sh [PREFIX] - build ckpt in release mode and install it (default
# PREFIX /usr/local):
#   PREFIX/bin/ckpt                   the ckpt command
#   PREFIX/lib/ckpt/libckpt.so        the preload library
#   PREFIX/lib/ckpt/spank_ckpt.so     the Slurm SPANK plugin
# Files are replaced atomically (copy, then rename): running jobs keep the old
# ones mapped. Prints the plugstack.conf line to add. Run as a user who may
# write PREFIX (root for /usr/local); the build uses CARGO_TARGET_DIR if set.
set -euo pipefail
export PATH=$PATH:$HOME/.cargo/bin
REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-/usr/local}
case "$PREFIX" in /*) ;; *) echo "install.sh: PREFIX must be absolute: $PREFIX" >&2; exit 2 ;; esac
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

(cd "$REPO" && cargo build --release -p spank-plugin -p ckpt-core -p ckpt-restart)

# put SRC DEST MODE: install through a temporary name and rename(2).
put() {
  local src=$1 dest=$2 mode=$3 dir tmp
  [ -f "$src" ] || { echo "install.sh: $src was not built" >&2; exit 1; }
  dir=$(dirname "$dest"); install -d -m 0755 "$dir"
  tmp=$(mktemp "$dir/.install.XXXXXX")
  cp "$src" "$tmp"; chmod "$mode" "$tmp"; mv -f "$tmp" "$dest"
  echo "installed $dest"
}
put "$TARGET/release/ckpt" "$PREFIX/bin/ckpt" 0755
put "$TARGET/release/libckpt.so" "$PREFIX/lib/ckpt/libckpt.so" 0755
put "$TARGET/release/libspank_ckpt.so" "$PREFIX/lib/ckpt/spank_ckpt.so" 0755

cat <<MSG

Add this line to plugstack.conf on every node and submit host (see
plugstack.conf.example for the other arguments), then restart slurmd:

optional $PREFIX/lib/ckpt/spank_ckpt.so libckpt=$PREFIX/lib/ckpt/libckpt.so ckpt=$PREFIX/bin/ckpt
MSG
