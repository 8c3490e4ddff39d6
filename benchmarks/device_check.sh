#!/usr/bin/env bash
# Every check that needs a GPU, in one command, for a lent device machine (see the device tool's README).
#
#   bash benchmarks/device_check.sh OUTDIR        # on the GPU machine, from the repository root
#
# Writes OUTDIR/{env,kernels,gpu_tests,torchflow,loader,trainer_w4,trainer_w12,predict}.txt and their .json. Budget:
# about 12 minutes on one H100/H200 after the machine is up (steps 0-2 about 7; the trainer and predict steps last,
# so a short budget cuts only them); each step has its own timeout so one hang cannot eat the rest.
# That machine's image has torch, triton, h5py, joblib, click, tqdm and matplotlib, but OpenCV without the
# contrib modules (no cv2.optflow, so no OpenCV TV-L1 to compare with: TV-L1 parity is then CUDA against
# torch on CPU, which is bit-identical to OpenCV on AVX2 CPUs). To bring the contrib build, put its wheel in
# .whl/ here first (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 -d .whl opencv-contrib-python-headless==4.14.0.94) and name .whl in carry:
# this script installs .whl/*.whl into /tmp/site and puts it first on PYTHONPATH.
set -uo pipefail
OUT=${1:-device_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
JOBS=$(nproc)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv,noheader
    python3 -c "import torch, triton, cv2; print('torch', torch.__version__, 'triton', triton.__version__, \
'cv2', cv2.__version__, 'optflow', hasattr(cv2, 'optflow'), 'capability', torch.cuda.get_device_capability())"
    echo "cpus $JOBS"
} 2>&1 | tee "$OUT/env.txt"

# 0. The kernels' ahead-of-time builds (CPU; the same check as the default suite's) with this machine's Triton.
timeout 60 python3 -m flowprep.flow.torchflow.kernel_build 2>&1 | tee "$OUT/kernels.txt"

# 1. CUDA tests: fused kernels compiled against the eager CUDA path, CUDA against CPU; the build checks.
#    The trainer's decode = device on CUDA against decode = cpu (-s prints the measured difference).
timeout 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/test_torchflow.py \
    tests/test_torchflow_fused.py tests/test_kernel_build.py 2>&1 | tee "$OUT/gpu_tests.txt"
timeout 60 python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/test_device_decode.py 2>&1 \
    | tee -a "$OUT/gpu_tests.txt"

# 2. Flow at 340x256: fused vs eager TV-L1 and Farneback fields/s by batch, GPU memory per field in flight,
#    the static model beside the measured rate (this GPU's copy bandwidth and launch time), CUDA vs CPU
#    parity, and `flowprep extract --device cuda` end to end on 200 generated videos of 50 frames.
timeout 270 python3 benchmarks/bench_torchflow.py --size 340x256 --batches 1,32,128,256 --pairs 16 \
    --cpu-batches 8 --extract 200 --extract-frames 50 --extract-batch 128 --jobs "$JOBS" \
    --json "$OUT/torchflow.json" 2>&1 | tee "$OUT/torchflow.txt"

# 3. Trainer input pipeline (decode cpu vs device, one synthetic 340x256 store for every trainer step): CPU ms
#    per sample of the loader workers and of the main process, cores to feed 2,500 samples/s (loader alone,
#    224 px, 4 workers); then ResNet-101 temporal and spatial, bf16, batch 128, with 4 and 12 workers: samples/s,
#    data-wait share, test views/s and the UCF101 split-1 test projected from it.
STORE_DIR=$(mktemp -d)
timeout 60 python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); \
from bench_trainer import make_store; print(make_store(Path('$STORE_DIR'), '340x256'))" > "$OUT/store.txt" 2>&1
STORE=$(tail -n 1 "$OUT/store.txt")
timeout 60 python3 benchmarks/bench_trainer.py --data "$STORE" --loader-only --device cuda --input 224 --batch 128 \
    --workers 4 --warmup 2 --iters 6 --decode cpu,device --json "$OUT/loader.json" 2>&1 | tee "$OUT/loader.txt"
for W in 4 12; do
    timeout 100 python3 benchmarks/bench_trainer.py --data "$STORE" --device cuda --arch resnet101 --batch 128 \
        --input 224 --workers "$W" --iters 8 --test-videos 4 --decode cpu,device --json "$OUT/trainer_w$W.json" \
        2>&1 | tee "$OUT/trainer_w$W.txt"
done

# 4. fusion predict (target: < 1 s per video): a 10 s 320x240 video, TV-L1 at 340x256 through the batched torch
#    backend, resnet101 streams with the 25 x 10 protocol, per-video breakdown; then its CUDA test.
timeout 150 python3 benchmarks/bench_predict.py --device cuda --video 320x240 --seconds 10 --size 340x256 \
    --arch resnet101 --input 224 --flow-length 10 --views 25x10 --classes 101 --repeats 4 2>&1 | tee "$OUT/predict.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fusion_predict.py 2>&1 | tee -a "$OUT/predict.txt"
