#!/usr/bin/env bash
# Benchmark nacz against xz / zstd / bzip2 / brotli on FILEs (default: enwik8, fetched with
# its checksum into corpora/downloads/). See bench/bench.py for the options.
#   ./bench.sh [FILE...] [--bytes N] [--nacz-args "..."]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
[ -x "$here/.venv/bin/python" ] && [ -z "${PYTHON:-}" ] && py="$here/.venv/bin/python"
cd "$here"
exec "$py" bench/bench.py "$@"
