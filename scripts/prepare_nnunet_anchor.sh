#!/usr/bin/env bash
# Assemble the carry folder for re-running the nnU-Net v2.8.1 anchor on a GPU machine
# (../shared/anchors/nnunet_h100/README.md), so that the hippocampus ratios of
# scripts/bench_vs_nnunet.py come from one session:
#
#   bash scripts/prepare_nnunet_anchor.sh [FOLDER]     # default .devdata/nnunet (git-ignored)
#
# then, on the device, carry FOLDER and run `bash FOLDER/run.sh` (about 6 minutes).
# The folder holds: run.sh from ../shared (not committed here), SimpleITK and the other
# wheels for Python 3.12 that the device image lacks, the raw hippocampus dataset,
# nnU-Net's own plans, fingerprint and splits_final.json (fold 0 fixed), and as ts/ the
# 42 fold-0 validation cases, the cases medmamba's bench predicts, so both tools time
# the same images.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=$(cd "$REPO/../shared" && pwd)
OUTDIR=${1:-$REPO/.devdata/nnunet}
DATA=$SHARED/data/Dataset004_Hippocampus
ANCHORS=$SHARED/anchors
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
BINARY="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS"
# nnU-Net and what it imports that the device image lacks (KINDS.md's package list).
# blosc2 stays at 3.x: 4.x also needs pydantic, and the folder must stay under 64 MiB.
WHEELS="nnunetv2==2.8.1 dynamic_network_architectures==0.4.4 batchgenerators==0.25.5
batchgeneratorsv2==0.3.6 blosc2==3.7.2 platformdirs==4.5.1 ndindex==1.10.1 numexpr==2.14.2
connected-components-3d==4.1.1 graphviz==0.21 nibabel==5.4.2 yacs==0.1.8 future==1.0.0"

quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

[ -d "$DATA" ] || { echo "$DATA: not found (../shared beside the repository)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE="$OUTDIR.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{plans,ts,raw} "$WORK"/{wheels,sitk,src}

echo "wheels"
# shellcheck disable=SC2086  # word splitting intended: flag and package lists
quiet python3 -m pip download -q $BINARY -d "$WORK/wheels" $WHEELS
quiet python3 -m pip download -q --no-deps --no-binary=:all: -d "$WORK/src" acvl_utils==0.2.6
quiet python3 -m pip wheel -q --no-deps -w "$WORK/wheels" "$WORK"/src/acvl_utils-0.2.6.tar.gz
tar cJf "$STAGE/wheels.tar.xz" -C "$WORK/wheels" .
# shellcheck disable=SC2086
quiet python3 -m pip download -q $BINARY -d "$WORK/sitk" SimpleITK==2.5.7
(cd "$WORK/sitk" && mkdir x && cd x && unzip -q ../simpleitk-2.5.7-*.whl && tar cJf "$STAGE/sitk.tar.xz" .)

echo "data, plans, split"
cp "$ANCHORS/nnunet_h100/run.sh" "$STAGE/"
cp -r "$DATA" "$STAGE/raw/"
cp "$ANCHORS/nnunet_Dataset004_Hippocampus_plans.json" "$STAGE/plans/nnUNetPlans.json"
cp "$ANCHORS/nnunet_Dataset004_Hippocampus_fingerprint.json" "$STAGE/plans/dataset_fingerprint.json"
cp "$ANCHORS/nnunet_Dataset004_Hippocampus_splits_final.json" "$STAGE/plans/splits_final.json"
cp "$DATA/dataset.json" "$STAGE/plans/"
python3 - "$STAGE/plans/splits_final.json" "$DATA/imagesTr" "$STAGE/ts" <<'EOF'
import json, shutil, sys
from pathlib import Path
split, images, ts = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cases = json.loads(Path(split).read_text())[0]["val"]
for case in cases:
    shutil.copy(images / f"{case}_0000.nii.gz", ts)
print(f"    ts/: {len(cases)} fold-0 validation cases")
EOF
rm -rf "$OUTDIR"
mv "$STAGE" "$OUTDIR"
du -sh "$OUTDIR"
size=$(du -sk "$OUTDIR" | cut -f1)
[ "$size" -lt 62000 ] || echo "WARNING: ${size} KiB: with the repository this may pass the device's 64 MiB" >&2
echo "carry it as [\"${OUTDIR#"$REPO"/}\"] and run: bash ${OUTDIR#"$REPO"/}/run.sh"
