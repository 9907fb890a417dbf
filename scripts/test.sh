#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs the real parts if missing (cached),
# checks that mesh-core is sans-IO, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-real-parts.sh)"
scripts/check-sans-io.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
