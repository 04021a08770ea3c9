# Sourced by the prepared GPU runs (gpu_bench.sh, gpu_infer.sh): results folder, the wheels
# in .whl/ installed beside the machine's torch, offline switches.
OUT=${OUT:-bench/results}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
