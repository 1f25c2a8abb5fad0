#!/usr/bin/env bash
# Builds llama-probe (scripts/llama_probe) against the llama.cpp that llama-cpp-python VERSION vendors,
# once, into DEST/bin/llama-probe; later runs return at once. tests/export/test_llama_cpp.py runs the
# exported GGUF files in it. We build from the sdist rather than install llama-cpp-python because its
# wheel build takes longer than CI allows (it compiles every tool), and the prebuilt llama-cpp-cffi
# wheel needs a newer libstdc++ than Debian 12 has.
#
#   scripts/build_llama_cpp.sh VERSION DEST        (PYTHON: the interpreter whose pip downloads the sdist)
#
# Only libllama, ggml's CPU backend and the probe are compiled (CPU only, static, portable code), within
# LLAMA_CPP_BUILD_TIMEOUT seconds (30 minutes; the build takes about 5 CPU-minutes); the log stays in
# DEST/build.log. A changed probe.c or CMakeLists.txt rebuilds; a changed flag here needs DEST removed.
set -euo pipefail
version=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
probe_src=$here/llama_probe
python=${PYTHON:-python3}
bin=$dest/bin/llama-probe
# The probe's sources decide whether a cached binary is still the right one.
want=$(cat "$probe_src/probe.c" "$probe_src/CMakeLists.txt" | sha256sum | cut -d' ' -f1)

if [ -x "$bin" ] && [ "$(cat "$bin.sha256" 2>/dev/null)" = "$want" ]; then
    echo "llama.cpp: $bin"
    exit 0
fi

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9  # two test runs at once: the second waits for the first build and then reuses it
if [ -x "$bin" ] && [ "$(cat "$bin.sha256" 2>/dev/null)" = "$want" ]; then
    echo "llama.cpp: $bin"
    exit 0
fi

for tool in cmake c++ cc; do
    if ! command -v "$tool" >/dev/null; then
        echo "llama.cpp: '$tool' is missing (Debian: apt-get install cmake g++)" >&2
        exit 1
    fi
done

log=$dest/build.log
sdist=$dest/llama_cpp_python-$version.tar.gz
started=$(date +%s)
deadline=$(( started + ${LLAMA_CPP_BUILD_TIMEOUT:-1800} ))
bounded() {  # every step shares the one bound; timeout ends a step's whole process group (make, compilers)
    local left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 0 ] && timeout "$left" "$@" >>"$log" 2>&1
}
fail() {
    tail -n 20 "$log" >&2
    echo "llama.cpp: $1 after $(( $(date +%s) - started ))s (bound: $(( deadline - started ))s); full log: $log" >&2
    exit 1
}
echo "llama.cpp: building llama-probe from llama-cpp-python $version into $dest (log: $log)"
: >"$log"
if [ ! -f "$sdist" ]; then
    bounded "$python" -m pip download -q --no-binary :all: --no-deps -d "$dest" "llama-cpp-python==$version" \
        || fail "downloading the llama-cpp-python $version sdist failed"
fi
rm -rf "$dest/src" "$dest/build"
mkdir -p "$dest/src"
bounded tar xzf "$sdist" -C "$dest/src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp" \
    || fail "unpacking $sdist failed"
# -O1: the tests run tiny models, so compile time matters and run time does not (-O3 compiles much slower).
bounded cmake -S "$probe_src" -B "$dest/build" -DLLAMA_CPP_DIR="$dest/src" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS_RELEASE="-O1 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    || fail "configuring the build failed"
bounded cmake --build "$dest/build" --target llama-probe -j "${BUILD_JOBS:-2}" \
    || fail "building failed (or ran past the bound)"

mkdir -p "$dest/bin"
cp "$dest/build/llama-probe" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$want" >"$bin.sha256"
rm -rf "$dest/src" "$dest/build"  # the sdist stays, so a rebuild needs no network
echo "llama.cpp: built $bin in $(( $(date +%s) - started ))s"
