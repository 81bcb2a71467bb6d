#!/usr/bin/env bash
# Compile facegate's int8 face encoder for the Coral Edge TPU and pin the result in a
# model cache, the way provision-unit.sh pins the Coral detector (<file>.sha256 beside it).
#
#   provisioning/compile-edgetpu.sh [--model-dir DIR] [--python PY]
#
# Run it on a machine that has Coral's compiler (x86-64 Debian/Ubuntu:
# `apt-get install edgetpu-compiler` from Coral's apt repository; there is no arm64
# build, so compile on a workstation and copy DIR's two files to the unit's model cache,
# /var/lib/facegate/models). Steps:
#   1. `facegate models build` makes dlib-resnet-v1-int8 (deterministic, sha256-pinned);
#   2. edgetpu_compiler compiles it; its version and the op mapping log are kept beside
#      the output (<file>.compiler, <file>.log);
#   3. `python -m device.ops.provision install-model` copies the output into DIR and
#      records its sha256 in <file>.sha256. The runtime refuses the compiled model
#      without that pin, and refuses it when its bytes no longer match it.
set -euo pipefail

MODEL_DIR=${FACEGATE_MODEL_DIR:-}
PYTHON=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case $1 in
    --model-dir) MODEL_DIR=$2; shift 2 ;;
    --python) PYTHON=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "compile-edgetpu: unknown option $1" >&2; exit 2 ;;
  esac
done

die() { echo "compile-edgetpu: $*" >&2; exit 1; }
command -v edgetpu_compiler >/dev/null ||
  die "edgetpu_compiler is not installed (Coral's apt repository, package edgetpu-compiler; x86-64 only)"

SOURCE_ID=dlib-resnet-v1-int8
TARGET_ID=dlib-resnet-v1-int8-edgetpu
[[ -n $MODEL_DIR ]] || MODEL_DIR=$("$PYTHON" -c 'from device.vision.models import default_cache_dir; print(default_cache_dir())')
mkdir -p "$MODEL_DIR"

"$PYTHON" -c 'from device.cli import main; main(prog_name="facegate")' models build --cache-dir "$MODEL_DIR" >&2
SOURCE=$("$PYTHON" -c "from pathlib import Path; from device.vision.models import verified_path; print(verified_path('$SOURCE_ID', cache_dir=Path('$MODEL_DIR')))")
TARGET_NAME=$("$PYTHON" -c "from device.vision.models import get_spec; print(get_spec('$TARGET_ID').path)")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VERSION=$(edgetpu_compiler --version 2>&1 | head -n 1)
# -s: print the op mapping; the compiler names its output <input>_edgetpu.tflite.
edgetpu_compiler -s -o "$WORK" "$SOURCE" | tee "$WORK/compile.log" >&2
OUT="$WORK/$(basename "${SOURCE%.tflite}")_edgetpu.tflite"
[[ -f $OUT ]] || die "edgetpu_compiler wrote no $OUT"
[[ $(basename "$OUT") == "$TARGET_NAME" ]] || { mv "$OUT" "$WORK/$TARGET_NAME"; OUT="$WORK/$TARGET_NAME"; }
SHA=$(sha256sum "$OUT" | cut -d' ' -f1)

"$PYTHON" -m device.ops.provision install-model "$TARGET_ID" --sha256 "$SHA" --file "$OUT" --dest "$MODEL_DIR"
printf '%s\nsource %s sha256 %s\n' "$VERSION" "$SOURCE_ID" "$(sha256sum "$SOURCE" | cut -d' ' -f1)" \
  > "$MODEL_DIR/$TARGET_NAME.compiler"
cp "$WORK/compile.log" "$MODEL_DIR/$TARGET_NAME.log"
echo "$TARGET_ID: $MODEL_DIR/$TARGET_NAME sha256 $SHA ($VERSION)"
