#!/usr/bin/env bash
# What the real-client tests need beyond pip, made ready before `make test` runs them:
#   - Debian's chromium, which tests/serve drives through playwright for the chat page (playwright's own
#     browser download is not reachable in CI, so the system browser it is);
#   - llama-probe, a llama.cpp build that tests/export runs the exported GGUF files in.
# Quick when both are already there. In CI (CI=true) anything missing is an error; elsewhere a warning,
# and the tests that need it skip.
#
#   scripts/test_deps.sh LLAMA_CPP_PYTHON_VERSION LLAMA_CPP_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
case "${CI:-}" in true|1) in_ci=1 ;; *) in_ci=0 ;; esac
missing=0

need() {  # need WHAT HOW: report a dependency that is not there
    if [ "$in_ci" = 1 ]; then
        echo "test-deps: $1 is missing and CI must run its tests: $2" >&2
    else
        echo "test-deps: warning: $1 is missing, so its tests will skip: $2" >&2
    fi
    missing=1
}

# Debian packages: chromium itself, and the compilers llama.cpp's build needs.
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
# a CJK font: without one chromium draws the board's Chinese page (and its screenshots) as tofu boxes
fc-list :lang=zh 2>/dev/null | grep -q . || packages+=(fonts-wqy-microhei)
command -v cmake >/dev/null || packages+=(cmake)
command -v c++ >/dev/null && command -v cc >/dev/null || packages+=(g++)
if [ "${#packages[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-deps: installing ${packages[*]} from Debian"
    log=$(mktemp)
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"; } >"$log" 2>&1 \
        || tail -n 20 "$log" >&2
    rm -f "$log"
fi
[ -x /usr/bin/chromium ] || need "chromium" "run 'apt-get update && apt-get install -y chromium' as root"

bash "$here/build_llama_cpp.sh" "$1" "$2" \
    || need "llama.cpp (llama-probe)" "see the build output above; rerun 'make test-deps' after fixing it"

[ "$missing" = 1 ] && [ "$in_ci" = 1 ] && exit 1
exit 0
