#!/bin/bash
# One device call of scripts/bench_vs_nnunet.py (scripts/bench_vs_nnunet.md: carry folder, limits).
#
#   bash scripts/device_call.sh hippo NET_GPU0 [NET_GPU1]
#       hippocampus benches, one process per GPU (nvidia-h200-x2 for two);
#       carry .devdata/bench/env .devdata/bench/hippo
#   bash scripts/device_call.sh brats NET...
#       nnU-Net's BraTS inference (anchors/nnunet_h100/infer_time.py), then ours with
#       --predict-compile on the same cases, one GPU;
#       carry .devdata/bench/env .devdata/bench/brats3x.tar.xz .devdata/nnb
#   bash scripts/device_call.sh run CMD...
#       CMD with the same packages installed (carry .devdata/bench/env and what CMD reads),
#       e.g. scripts/bench_window_forward.py on a carried plans folder
#
# Logs come back as one tar (a call returns at most 8 files), results as JSON, and the
# tables are printed (a call returns the last 12,000 characters of its output).
set -o pipefail
mode=$1; shift
case $mode in hippo|brats|run) ;; *) echo "mode: hippo, brats or run, got '$mode'"; exit 2 ;; esac
[ -n "$OUT" ] || { echo "OUT is not set (run this through the device tool)"; exit 2; }
mkdir -p /tmp/site /tmp/logs
# A warm machine keeps /tmp/site: the marker is written only once everything installed.
if [ ! -f /tmp/site/.medmamba-deps ]; then
  tar xJf .devdata/bench/env/sitk.tar.xz -C /tmp/site &&
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .devdata/bench/env/wheels/*.whl &&
    touch /tmp/site/.medmamba-deps || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# Results of an earlier call on a warm machine must not come back as this call's.
rm -f .devdata/bench/out/*.json .devdata/bench/out3/*.json
finish() { tar czf "$OUT/logs.tgz" -C /tmp/logs . ; cp "$@" "$OUT"/ 2>/dev/null; }
case $mode in
run)
  "$@" ;;
hippo)
  B="python3 scripts/bench_vs_nnunet.py .devdata/bench/out --data .devdata/bench/hippo/Dataset004_Hippocampus --split-file .devdata/bench/hippo/splits_final.json"
  timeout 120 $B --prepare-only > /tmp/logs/prepare.log 2>&1 || { cat /tmp/logs/prepare.log; exit 1; }
  gpu=0 pids=()
  for net in "$@"; do
    (export CUDA_VISIBLE_DEVICES=$gpu; timeout 420 $B --networks "$net" > "/tmp/logs/${net/:/_}.log" 2>&1) &
    pids+=($!) gpu=$((gpu + 1))
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  finish .devdata/bench/out/*.json
  [ "$failed" -eq 0 ] || echo "$failed of $# benches failed or timed out (logs.tgz)"
  python3 scripts/bench_vs_nnunet.py .devdata/bench/out --table-only ;;
brats)
  mkdir -p /tmp/brats /tmp/nnb/ts .devdata/bench/out3
  [ -d /tmp/brats/Dataset101_BraTS2015DeepMedicSample ] || { tar xJf .devdata/bench/brats3x.tar.xz -C /tmp/brats && gzip -1 /tmp/brats/*/*/*.nii; } || exit 1
  cp /tmp/brats/*/imagesTr/*.nii.gz /tmp/nnb/ts/ && cp .devdata/nnb/plans.json .devdata/nnb/dataset.json /tmp/nnb/ || exit 1
  if [ -f .devdata/nnb/wheels.tar.xz ]; then
    mkdir -p /tmp/w && tar xJf .devdata/nnb/wheels.tar.xz -C /tmp/w && python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/w/*.whl || exit 1
    timeout 90 python3 .devdata/nnb/infer_time.py /tmp/nnb cuda > /tmp/logs/nnunet_brats.log 2>&1 ||
      echo "nnU-Net's infer_time.py failed or timed out (logs.tgz)"
    python3 scripts/vs_nnunet_table.py --brats-log /tmp/logs/nnunet_brats.log --out .devdata/bench/out3/nnunet_brats__rerun.json \
      --name "nnU-Net v2.8.1 (re-run, same call)" > /dev/null || true
  fi
  timeout 400 python3 scripts/bench_vs_nnunet.py .devdata/bench/out3 --brats /tmp/brats/Dataset101_BraTS2015DeepMedicSample \
    --predict-compile --networks "$@" > /tmp/logs/brats.log 2>&1 || echo "our BraTS bench failed or timed out (logs.tgz)"
  finish .devdata/bench/out3/*.json
  python3 scripts/bench_vs_nnunet.py .devdata/bench/out3 --table-only ;;
esac
