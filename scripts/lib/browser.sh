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
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  need_root "Node.js and npm" "nodejs npm"
  apt_install nodejs npm
fi

# One directory per pinned version, so a bump installs beside the old one.
browser_cache="${XDG_CACHE_HOME:-$HOME/.cache}/datask-browser/playwright-core-$PLAYWRIGHT_VERSION"
if [ ! -f "$browser_cache/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core $PLAYWRIGHT_VERSION…"
  mkdir -p "$browser_cache"
  npm install --no-save --no-audit --no-fund --silent --prefix "$browser_cache" \
    "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi

export DATASK_TEST_BROWSER="$browser_bin"
export DATASK_TEST_NODE_PATH="$browser_cache/node_modules"
export DATASK_REQUIRE_BROWSER=1
