#!/usr/bin/env bash
# Install the Debian packages the project needs, when they are missing and we are able to.
# Never fails the build: without them the corpus falls back to the built-in bowed-string model
# (the book says so) and the browser tests report that Chromium is missing.
set -u
missing=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system: no apt-get; please install: ${missing[*]}" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_system: not root; please install: ${missing[*]}" >&2; exit 0
  fi
fi
echo "install_system: installing ${missing[*]}"
$SUDO apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
  || echo "install_system: apt-get install failed for: ${missing[*]}" >&2
exit 0
