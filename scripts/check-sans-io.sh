#!/usr/bin/env bash
# mesh-core must stay sans-IO: fail if it depends (directly or transitively, normal deps) on an
# async runtime, a transport or an HTTP stack.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|iroh|axum|reqwest|turmoil|hyper|mio) '
deps=$(cargo tree -p mesh-core -e normal --prefix none)
if bad=$(grep -E "$forbidden" <<<"$deps" | sort -u) && [ -n "$bad" ]; then
  echo "check-sans-io: mesh-core must not depend on:" >&2
  echo "$bad" >&2
  exit 1
fi
# Nor may its source read a clock or the global RNG.
if grep -rnE 'std::time::(Instant|SystemTime)|SystemTime::now|Instant::now|thread_rng|rand::rng\(|OsRng|std::fs::|std::net::(Tcp|Udp)' mesh-core/src; then
  echo "check-sans-io: mesh-core source reads a clock, the OS RNG, files or sockets (above)" >&2
  exit 1
fi
echo "check-sans-io: mesh-core depends on none of tokio, iroh, axum, reqwest, turmoil, hyper, mio"
