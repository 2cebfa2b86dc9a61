#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the console's browser tests (tests/browser).
#
#   scripts/chromium.sh          install chromium and chromium-driver from Debian when
#                                /usr/bin/chromium or /usr/bin/chromedriver is missing (as root,
#                                apt-get update first); then print both versions
#
# Idempotent: with both present it only prints what is there. The browser is never downloaded
# from anywhere but Debian's archive, and the tests run it headless on loopback only.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

log() { echo "chromium.sh: $*" >&2; }
die() { echo "chromium.sh: ERROR: $*" >&2; exit 1; }

if [ ! -x "$CHROMIUM" ] || [ ! -x "$DRIVER" ]; then
    command -v apt-get >/dev/null || die "apt-get not found; install chromium and chromium-driver by hand"
    [ "$(id -u)" = 0 ] || die "not root: run 'sudo apt-get install chromium chromium-driver' (or this script as root)"
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    log "apt-get install -y chromium chromium-driver"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >&2 || die "apt-get install chromium chromium-driver failed"
fi
[ -x "$CHROMIUM" ] || die "$CHROMIUM missing after install"
[ -x "$DRIVER" ] || die "$DRIVER missing after install"
echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM (version unknown)")"
echo "chromedriver: $("$DRIVER" --version 2>/dev/null || echo "$DRIVER (version unknown)")"
