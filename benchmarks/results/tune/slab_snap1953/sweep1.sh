#!/bin/bash
# Solver sweep on both tuning slices (055, 056) with the prior shipped at step 1953 (58 kimg).
# Run from the repository root; writes the JSON files of this folder (NAME_SOLVER.json).
T="--network checkpoints/ct_head_small.safetensors --images datasets/ct_head/tune --max-images 2 --threads 1 --steps 20 --sigma-max 1"
OUT=benchmarks/results/tune/slab_snap1953
# name | problem | operator options | noise | dds lam values
while IFS='|' read -r name problem opts noise ddslam; do
    for solver in diffpir dds; do
        grid="lam=0.1,0.3,1"
        [[ $solver == dds ]] && grid="lam=$ddslam"
        echo "== ${name}_$solver"
        OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_solver.py $T --problem "$problem" --problem-opts "$opts" \
            --noise "$noise" --solver $solver --grid "$grid" --out "$OUT/${name}_$solver.json"
    done
done <<'CASES'
ct20|ct_parbeam|views=20|0.005|0.003,0.01
deblur|deblur_uniform|kernel_size=9|0.01|0.1
super|super|factor=4|0.01|0.01
ct8|ct_parbeam|views=8|0.005|0.01
fan|ct_fanbeam|views=40|0.005|0.01
lact|ct_lact|views=60;angle_range=0,2.0944|0.005|0.003
CASES
