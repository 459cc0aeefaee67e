# Sourced by scripts/test after pg.sh (it reuses apt_install and need_root):
# installs Debian's Chromium and a pinned playwright-core (which drives it;
# it cannot download a browser of its own here) for the console's browser
# test. Sets DATASK_TEST_BROWSER, DATASK_TEST_NODE_PATH and
# DATASK_REQUIRE_BROWSER=1.

PLAYWRIGHT_VERSION=1.65.1

browser_bin=$(command -v chromium || true)
if [ -z "$browser_bin" ]; then
  need_root "Chromium" chromium
  echo "installing Chromium…"
  apt_install chromium
  browser_bin=$(command -v chromium)
fi
# Not installed from Debian: its nodejs is 18, and this playwright-core needs 20.
if ! command -v npm >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
  echo "$0: the console's browser test needs Node.js 20 or later with npm" >&2
  exit 1
fi

# One directory per pinned version, so a bump installs beside the old one.
browser_cache="${XDG_CACHE_HOME:-$HOME/.cache}/datask-browser/playwright-core-$PLAYWRIGHT_VERSION"
if [ ! -f "$browser_cache/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core $PLAYWRIGHT_VERSION…"
  mkdir -p "$browser_cache"
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$browser_cache" \
    "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi

export DATASK_TEST_BROWSER="$browser_bin"
export DATASK_TEST_NODE_PATH="$browser_cache/node_modules"
export DATASK_REQUIRE_BROWSER=1
