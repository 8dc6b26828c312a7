#!/bin/bash
# DiffPIR lam sweep with the augmented prior, on both tuning slices (055, 056) and on the same
# slices under the shifted benchmark's shifts (benchmarks/shifts.py, seed 0). Run from the
# repository root as: bash benchmarks/results/tune/aug/sweep.sh NETWORK
# Writes NAME_{tune,shifted}.json into this folder.
set -e
NET=${1:?network file}
OUT=benchmarks/results/tune/aug
SHIFTED=${SHIFTED_DIR:-/tmp/padis-shifted-tune}
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from shifts import stage_shifted; \
stage_shifted(sorted(Path('datasets/ct_head/tune').glob('slice_*.png')), Path('$SHIFTED'))"
T="--network $NET --max-images 2 --threads 1 --solver diffpir"
# name | problem | operator options | noise | grid
while IFS='|' read -r name problem opts noise grid; do
    for set in tune shifted; do
        images=datasets/ct_head/tune; [[ $set == shifted ]] && images=$SHIFTED
        echo "== ${name}_$set"
        OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_solver.py $T --images $images --problem "$problem" \
            --problem-opts "$opts" --noise "$noise" --grid "$grid" --out "$OUT/${name}_$set.json"
    done
done <<'CASES'
ct20|ct_parbeam|views=20|0.005|lam=0.1,0.3,1;steps=20
ct8|ct_parbeam|views=8|0.005|lam=0.1,0.3,1;steps=20
fan|ct_fanbeam|views=40|0.005|lam=0.1,0.3,1;steps=20
lact|ct_lact|views=60;angle_range=0,2.0944|0.005|lam=0.03,0.1,0.3;steps=20,50
deblur|deblur_uniform|kernel_size=9|0.01|lam=0.1,0.3,1;steps=20
super|super|factor=4|0.01|lam=0.1,0.3,1;steps=20
CASES
