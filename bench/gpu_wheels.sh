#!/usr/bin/env bash
# Download what bench/gpu_suite.py needs on the GPU device machine and its image lacks, into .whl/ at the repo
# root (ignored by git; it travels with `carry: [".whl"]`). That machine has Python 3.12 and no registry access;
# its image already holds torch, transformers, peft, accelerate, safetensors, einops, scipy, opencv, onnx,
# onnxruntime and torchaudio (see bench/gpu_suite.py's docstring for the run command).
#
#   bash bench/gpu_wheels.sh            # then: ls .whl  (about 35 MB)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

# Pure-Python wheels, except imageio-ffmpeg (a static ffmpeg: the suite writes and reads mp4 control clips).
# PyAV (ltx-pipelines' media I/O) is deliberately absent: the suite stands in for it (never opens media with it).
PKGS=(diffusers==0.42.1 ltx-core==1.0.0 ltx-pipelines==1.0.0 imageio-ffmpeg==0.6.0)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PKGS[@]}"
ls -la .whl
du -sh .whl
