#!/usr/bin/env bash
# Install the course: CPU torch (unless a torch is already there), the Rust toolchain's
# crates when crates.io is unreachable, then the project itself, editable.
#   bash scripts/setup.sh            # the course + dev tools
# On a GPU machine install the CUDA torch you want first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

# 1. torch: on Linux a bare `pip install torch` pulls a multi-GB CUDA build (PyPI's wheel); on a
#    CPU-only box ask PyTorch's CPU index first, then any index pip is configured with.
if ! python -c "import torch" 2>/dev/null; then
    if have nvidia-smi; then pip install torch
    else pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu || pip install "torch==2.13.0"
    fi
fi

# 2. Rust: cargo + rustc are needed to build rustbpe.
if ! have cargo; then
    echo "setup: cargo not found. Install Rust (https://rustup.rs) or 'apt-get install cargo'." >&2
    exit 1
fi

# 3. Offline crates: if crates.io is unreachable, build against Debian's packaged crates
#    through cargo's source replacement. Written to the user's cargo config, never the repo.
if ! timeout 8 cargo search pyo3 --limit 1 >/dev/null 2>&1; then
    echo "setup: crates.io unreachable; using Debian's librust-*-dev crates"
    if have apt-get; then
        apt-get install -y --no-install-recommends librust-pyo3-dev librust-fancy-regex-dev \
            librust-regex-dev librust-rayon-dev librust-ahash-dev librust-indexmap-dev \
            librust-log-dev >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends \
            librust-pyo3-dev librust-fancy-regex-dev librust-regex-dev librust-rayon-dev \
            librust-ahash-dev librust-indexmap-dev librust-log-dev >/dev/null; }
    fi
    cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    mkdir -p "$cargo_home"
    if ! grep -q 'debian-packages' "$cargo_home/config.toml" 2>/dev/null; then
        cat >> "$cargo_home/config.toml" <<'TOML'

[source.debian-packages]
directory = "/usr/share/cargo/registry"
[source.crates-io]
replace-with = "debian-packages"
TOML
    fi
fi

# 4. The sandbox for model-written code (nanochat/execution.py): bubblewrap makes its
#    namespaces. Installed when we can (root + apt); otherwise say how.
if [ "$(uname -s)" = Linux ] && ! have bwrap; then
    if have apt-get && [ "$(id -u)" = 0 ]; then
        apt-get install -y --no-install-recommends bubblewrap >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends bubblewrap >/dev/null; }
    else
        echo "setup: install bubblewrap for the code sandbox (sudo apt install bubblewrap / sudo dnf install bubblewrap);" \
             "without it the Python tool and HumanEval refuse to run" >&2
    fi
fi

# 5. The project: nanochat + rustbpe, editable, with the course and test tools.
pip install -e ".[dev]"
python -c "import nanochat, rustbpe; print('setup: ok, nanochat and rustbpe import')"
python -c "from nanochat.execution import isolation_problem as p; print('setup: code sandbox:', p() or 'ok (bubblewrap namespaces)')"
