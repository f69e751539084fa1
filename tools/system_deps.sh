#!/usr/bin/env bash
# Debian packages the service tests drive as real tools (README "Tests"): chromium for the
# serve page (Playwright launches it by path), DCMTK and Orthanc for edgemed listen,
# dicom3tools' dciodvfy to validate SEG/SR, hey as the HTTP load generator, libb64 for
# Triton's perf_analyzer. Installs only what is missing; tests that need a tool skip with
# the reason where it is absent (a developer's machine without root), CI installs them.
set -euo pipefail
want=(chromium dcmtk orthanc dicom3tools hey libb64-0d)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "tools/system_deps.sh: not root or no apt-get; tests needing ${missing[*]} will skip" >&2
  exit 0
fi
echo "+ apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
