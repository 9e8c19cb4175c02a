#!/bin/sh
# Installs edgeq as a systemd service, from a built checkout (npm ci has run, so dist/ exists):
#   sudo systemd/install.sh [--now]
# - a system user and group `edgeq`;
# - the agent in $EDGEQ_HOME (default /opt/edgeq) with production dependencies only;
# - /etc/edgeq (root:edgeq 0750) with config.json (root:edgeq 0640) if there is none yet
#   (broker from $EDGEQ_BROKER, default mqtt://127.0.0.1:1883);
# - /var/lib/edgeq (edgeq:edgeq 0750), the state directory;
# - /etc/systemd/system/edgeq.service, checked with systemd-analyze verify, then enabled
#   (and started with --now).
# Running it again upgrades the agent and the unit and keeps the config and the state.
set -eu

EDGEQ_HOME=${EDGEQ_HOME:-/opt/edgeq}
CONF_DIR=/etc/edgeq
STATE_DIR=/var/lib/edgeq
UNIT=/etc/systemd/system/edgeq.service
SRC=$(cd "$(dirname "$0")/.." && pwd)
NOW=
for a in "$@"; do
  case "$a" in
    --now) NOW=--now ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $a (only --now)" >&2; exit 2 ;;
  esac
done

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -f "$SRC/dist/agent/cli.js" ] || die "$SRC/dist is missing: run npm ci in the checkout first"
command -v systemctl >/dev/null || die "systemctl not found: this installs a systemd service"
command -v systemd-notify >/dev/null || die "systemd-notify not found (the daemon sends readiness and watchdog pings with it)"
NODE=$(command -v node) || die "node (20 or later) not found"
"$NODE" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || die "node 20 or later is needed, found $("$NODE" --version)"

# The user and group.
if ! getent group edgeq >/dev/null; then groupadd --system edgeq; fi
if ! getent passwd edgeq >/dev/null; then
  useradd --system --gid edgeq --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin --comment "edgeq agent" edgeq
fi

# The agent: bin, dist (without the tests) and production dependencies.
install -d -m 0755 "$EDGEQ_HOME"
rm -rf "$EDGEQ_HOME/dist" "$EDGEQ_HOME/bin"
cp -R "$SRC/bin" "$SRC/dist" "$EDGEQ_HOME/"
rm -rf "$EDGEQ_HOME/dist/test"
cp "$SRC/package.json" "$SRC/package-lock.json" "$EDGEQ_HOME/"
[ -f "$SRC/README.md" ] && cp "$SRC/README.md" "$EDGEQ_HOME/"
# --ignore-scripts skips `prepare` (it compiles TypeScript, a dev dependency); the two native
# modules then fetch or build their binaries.
(cd "$EDGEQ_HOME" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm rebuild better-sqlite3 onnxruntime-node)
chown -R root:root "$EDGEQ_HOME"

# Directories (systemd creates them too, from StateDirectory= and ConfigurationDirectory=).
install -d -m 0750 -o root -g edgeq "$CONF_DIR"
install -d -m 0750 -o edgeq -g edgeq "$STATE_DIR"
if [ ! -e "$CONF_DIR/config.json" ]; then
  umask 027
  cat >"$CONF_DIR/config.json" <<JSON
{
  "stateDir": "$STATE_DIR",
  "broker": { "url": "${EDGEQ_BROKER:-mqtt://127.0.0.1:1883}" }
}
JSON
  chown root:edgeq "$CONF_DIR/config.json"
  chmod 0640 "$CONF_DIR/config.json"
  echo "install.sh: wrote $CONF_DIR/config.json; edit the broker and credentials there"
fi

# The unit, with ExecStart pointing at this node and this EDGEQ_HOME.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sed -e "s#^ExecStart=/usr/bin/node /opt/edgeq/#ExecStart=$NODE $EDGEQ_HOME/#" -e "s#file:/opt/edgeq/#file:$EDGEQ_HOME/#" "$SRC/systemd/edgeq.service" >"$tmp"
install -m 0644 "$tmp" "$UNIT"
if command -v systemd-analyze >/dev/null; then systemd-analyze verify "$UNIT"; fi
systemctl daemon-reload
systemctl enable $NOW edgeq.service
echo "install.sh: edgeq.service enabled${NOW:+ and started}; logs: journalctl -u edgeq -o cat"
