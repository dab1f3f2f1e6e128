#!/usr/bin/env bash
# Installs what the browser test of the demo page needs (tests/web/demo.browser.mjs):
# Debian's Chromium and its driver, and the npm packages of tests/web (playwright-core, which
# drives /usr/bin/chromium and downloads no browser of its own). Idempotent: a second run
# installs nothing and says so.
#
#   deploy/local/browser.sh
#   node tests/web/demo.browser.mjs http://127.0.0.1:8080 /tmp/demo.png
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WEB="$ROOT/tests/web"
STAMP="$WEB/node_modules/.package-lock.sha256"

log() { echo "[browser] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Debian packages: chromium (the browser at /usr/bin/chromium) and chromium-driver.
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  log "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
else
  sudo=''
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "not root and no sudo: install chromium and chromium-driver by hand"
    sudo=sudo
  fi
  log "chromium: installing chromium chromium-driver with apt-get"
  ok=''
  # Another apt/dpkg run may hold the locks: wait for it, and retry a few times.
  for _ in 1 2 3 4 5; do
    if $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends chromium chromium-driver >&2; then
      ok=1
      break
    fi
    log "apt-get failed (lock held?), retrying in 10 s"
    sleep 10
  done
  [[ -n $ok ]] || die "apt-get install chromium chromium-driver failed"
  [[ -x /usr/bin/chromium ]] || die "chromium installed but /usr/bin/chromium is missing"
  log "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo 'version unknown'))"
fi

# npm packages of tests/web, reinstalled when package-lock.json changed since the last install.
command -v npm >/dev/null || die "npm not found (Node.js 20 or newer is needed)"
want=$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ -d $WEB/node_modules && $have == "$want" ]]; then
  log "npm: tests/web/node_modules is up to date with package-lock.json"
else
  if [[ -d $WEB/node_modules ]]; then
    log "npm: package-lock.json changed since the last install: npm ci in tests/web"
  else
    log "npm: no tests/web/node_modules: npm ci in tests/web"
  fi
  (cd "$WEB" && npm ci --no-audit --no-fund >&2) || die "npm ci in tests/web failed"
  echo "$want" >"$STAMP"
  log "npm: installed $(cd "$WEB" && node -p 'require("playwright-core/package.json").version' 2>/dev/null | sed 's/^/playwright-core /')"
fi
log "ready: node tests/web/demo.browser.mjs <base-url> <screenshot.png>"
