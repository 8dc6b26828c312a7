#!/bin/bash
# Solver sweep on both tuning slices (055, 056) with the prior shipped at step 1953 (58 kimg).
# Run from the repository root; writes the JSON files of this folder.
N=checkpoints/ct_head_small.safetensors
T="--network $N --images datasets/ct_head/tune --max-images 2 --threads 1 --steps 20 --sigma-max 1"
run() { name=$1; shift; echo "== $name" ; OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_solver.py $T "$@" --out benchmarks/results/tune/slab_snap1953/$name.json; }
run ct20_diffpir --problem ct_parbeam --problem-opts "views=20" --noise 0.005 --solver diffpir --grid "lam=0.1,0.3,1"
run ct20_dds --problem ct_parbeam --problem-opts "views=20" --noise 0.005 --solver dds --grid "lam=0.003,0.01"
run deblur_diffpir --problem deblur_uniform --problem-opts "kernel_size=9" --noise 0.01 --solver diffpir --grid "lam=0.1,0.3,1"
run deblur_dds --problem deblur_uniform --problem-opts "kernel_size=9" --noise 0.01 --solver dds --grid "lam=0.1"
run super_diffpir --problem super --problem-opts "factor=4" --noise 0.01 --solver diffpir --grid "lam=0.1,0.3,1"
run super_dds --problem super --problem-opts "factor=4" --noise 0.01 --solver dds --grid "lam=0.01"
run ct8_diffpir --problem ct_parbeam --problem-opts "views=8" --noise 0.005 --solver diffpir --grid "lam=0.1,0.3,1"
run ct8_dds --problem ct_parbeam --problem-opts "views=8" --noise 0.005 --solver dds --grid "lam=0.01"
run fan_diffpir --problem ct_fanbeam --problem-opts "views=40" --noise 0.005 --solver diffpir --grid "lam=0.1,0.3,1"
run fan_dds --problem ct_fanbeam --problem-opts "views=40" --noise 0.005 --solver dds --grid "lam=0.01"
run lact_diffpir --problem ct_lact --problem-opts "views=60;angle_range=0,2.0944" --noise 0.005 --solver diffpir --grid "lam=0.1,0.3,1"
run lact_dds --problem ct_lact --problem-opts "views=60;angle_range=0,2.0944" --noise 0.005 --solver dds --grid "lam=0.003"
echo DONE
