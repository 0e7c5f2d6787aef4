#!/usr/bin/env bash
# The install a PyPI user gets: a fresh venv, `pip install .` (not editable) of a
# clean copy of the checkout, then, from a folder outside the repository: every
# speechbrain_slap module imports, torchaudio's native code runs, `slap --version`
# and `slap demo` work, and `pip check` is clean. Each failure prints one
# "CI: plain install: ..." line saying what broke.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "CI: plain install: $*" >&2; exit 1; }

git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && tar --null -T - -cf -) | (mkdir -p "$work/src" && tar -xf - -C "$work/src")
python3.11 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$work/src[demo]" \
    || fail "pip install . failed"
rm -rf "$work/src"  # nothing may be read from the source tree from here on

cd "$work"
"$work/venv/bin/pip" check || fail "pip check found broken requirements"
"$work/venv/bin/python" - <<'PY' || fail "a module does not import (see above)"
import importlib
import pkgutil
import sys

import speechbrain_slap

location = speechbrain_slap.__file__
if "site-packages" not in location:
    sys.exit(f"CI: plain install: speechbrain_slap imported from {location}, not the venv")
failed = []
names = [m.name for m in pkgutil.walk_packages(speechbrain_slap.__path__, "speechbrain_slap.")]
for name in ["speechbrain_slap", *names]:
    try:
        importlib.import_module(name)
    except Exception as error:  # report every module, then fail
        failed.append(name)
        print(f"CI: plain install: {name} does not import: {type(error).__name__}: {error}",
              file=sys.stderr)
import torch
import torchaudio

out = torchaudio.functional.resample(torch.ones(1, 16000), 16000, 8000)
assert out.shape == (1, 8000), out.shape
from speechbrain_slap.hparams import ARCHITECTURES, architecture_file

for arch in ARCHITECTURES:
    assert architecture_file(arch).is_file(), f"{arch} architecture not shipped"
print(f"CI: plain install: {len(names) + 1} modules import; torchaudio resample runs")
sys.exit(1 if failed else 0)
PY
version=$("$work/venv/bin/slap" --version) || fail "slap --version failed"
echo "CI: plain install: $version"
HF_HUB_OFFLINE=1 "$work/venv/bin/slap" demo --output-folder "$work/demo" >/dev/null \
    || fail "slap demo failed"
echo "CI: plain install: slap demo passed"
