#!/usr/bin/env bash
# An emulated Raspberry Pi OS-like root (Debian bookworm arm64 under qemu-user-static)
# in which the unit's real install runs; cached, so a second run is quick.
#
#   sudo bash provisioning/arm64-root.sh [--root DIR] [--rebuild]
#       builds (or refreshes) the root and provisions facegate into it, then prints its path
#   sudo bash provisioning/arm64-root.sh --run CMD...
#       runs CMD inside the root (as root, with /proc, the repo and the datasets mounted)
#
# What runs inside is provisioning/provision-unit.sh itself, live, with --no-services:
# the Debian packages, the facegate user and groups, the venv from the hash-locked
# provisioning/requirements-arm64.lock, the config, the credentials and the unit files,
# and `facegate models build`. Skipped, because they need a booted system or Raspberry
# Pi's own archive (the script lists them in its actions file):
#   * python3-picamera2 and rpicam-apps-lite (Raspberry Pi OS archive only);
#   * udevadm and systemctl (no udev or systemd as PID 1 in a chroot);
#   * Coral's apt repository (a unit fetches it; the Edge TPU code paths are tested
#     without it).
# Needs root (debootstrap, chroot, mounts) and the package registries.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${FACEGATE_ARM64_ROOT:-/var/cache/facegate-arm64/root}
MIRROR=${FACEGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REBUILD=0
RUN=()
while (($#)); do
  case $1 in
    --root) ROOT=$2; shift 2 ;;
    --rebuild) REBUILD=1; shift ;;
    --run) shift; RUN=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "arm64-root: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "arm64-root: $*" >&2; }
die() { say "$*"; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot and bind mounts)"

# ---------------------------------------------------------------- host tools
need=()
for p in qemu-user-static debootstrap binfmt-support; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 \
  || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"

# ---------------------------------------------------------------- mounts for a chroot
MOUNTS=()
mount_in() { # SRC DEST [ro]
  mkdir -p "$ROOT$2"
  mountpoint -q "$ROOT$2" && return 0
  mount --bind "$1" "$ROOT$2"
  [[ "${3:-}" != ro ]] || mount -o remount,bind,ro "$ROOT$2"
  MOUNTS+=("$ROOT$2")
}
cleanup() {
  local i
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
enter() { # CMD... inside the root
  mountpoint -q "$ROOT/proc" || { mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc"); }
  mount_in /dev /dev
  # No /sys: with it mounted, LiteRT segfaulted under qemu-user here (XNNPACK's cpuinfo then
  # reads the host's CPU lists); without it cpuinfo warns and uses its baseline kernels.
  mount_in "$REPO" /opt/facegate-src ro
  local datasets=${FACEGATE_DATASETS:-$REPO/../shared/datasets}
  [[ ! -d "$datasets" ]] || mount_in "$(cd "$datasets" && pwd)" /opt/datasets ro
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # The host's CA bundle: the package registries are reached the way the host reaches them.
  cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca.crt" 2>/dev/null || true
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    HOME=/root LANG=C.UTF-8 PIP_CERT=/etc/ssl/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 FACEGATE_DATASETS=/opt/datasets \
    FACEGATE_MODEL_DIR=/var/lib/facegate/models "$@"
}

if ((${#RUN[@]})); then
  [[ -x "$ROOT/usr/bin/python3" ]] || die "no arm64 root at $ROOT; build it first (no --run)"
  enter "${RUN[@]}"
  exit $?
fi

# ---------------------------------------------------------------- the base system
if ((REBUILD)); then rm -rf "$ROOT"; fi
if [[ ! -f "$ROOT/.facegate-base" ]]; then
  rm -rf "$ROOT"
  mkdir -p "$(dirname "$ROOT")"
  say "debootstrap bookworm arm64 into $ROOT (a few minutes)"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,mosquitto \
    bookworm "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $ROOT.debootstrap.log"
  [[ "$(chroot "$ROOT" uname -m)" == aarch64 ]] || die "the root does not run as aarch64"
  date -u +%FT%TZ >"$ROOT/.facegate-base"
fi

# ---------------------------------------------------------------- the unit's install
# Re-provision when the lock or the source changes (the script is idempotent anyway).
stamp=$( (cat "$REPO/provisioning/requirements-arm64.lock"; git -C "$REPO" rev-parse HEAD 2>/dev/null;
          git -C "$REPO" diff 2>/dev/null) | sha256sum | cut -c1-16)
if [[ "$(cat "$ROOT/.facegate-provisioned" 2>/dev/null)" != "$stamp" ]]; then
  say "provisioning facegate into the root (provision-unit.sh --no-services)"
  keys=$(mktemp -d "$ROOT/tmp/keys.XXXX")
  # A throwaway signer so the install is complete; tests bring their own keys.
  "${PYTHON:-$REPO/.venv/bin/python}" - "$keys/ci.pub" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
pub = Ed25519PrivateKey.generate().public_key()
open(sys.argv[1], "wb").write(pub.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
PY
  enter bash /opt/facegate-src/provisioning/provision-unit.sh --no-services \
    --unit-id arm64-ci --broker mqtt://127.0.0.1:1883 --camera test=image:/opt/facegate-src \
    --trusted-keys "/tmp/$(basename "$keys")" --source /opt/facegate-src \
    || die "provision-unit.sh failed inside the root"
  rm -rf "$keys"
  echo "$stamp" >"$ROOT/.facegate-provisioned"
fi
echo "$ROOT"
