#!/usr/bin/env bash
# One step of a GPU session (README "On a GPU"), in the repo root of a lent GPU machine, with .gpu/
# from `make gpu-bundle` carried along. Results go to $OUT (the device tool brings it back), else
# output/gpu; BENCH_ARGS adds benchmark options (e.g. "--images 8" for a quick look). Each step fits the device tool's 10 minutes per command.
#
#   bash install/gpu_session.sh check
#       the machine and versions; training images/s of the R50-FPN 640 px config beside
#       Detectron2's DefaultTrainer, AMP off and on; then the whole suite with its pipeline tests
#       on CUDA (TUMORSEG_TEST_DEVICE=cuda), tests/test_cuda.py first, until the step's time is up
#   bash install/gpu_session.sh train ITERS AMP [infer] [bench] [KEY VALUE ...]
#       R50-FPN 640 px from scratch for ITERS iterations with SOLVER.AMP.ENABLED AMP (True|False),
#       then the test split and its report; "infer": then the inference benchmark (BatchPredictor
#       beside DefaultPredictor, with AP) on the trained model; "bench": then the training
#       images/s beside Detectron2's DefaultTrainer, AMP off and on
set -uo pipefail
cd "$(dirname "$0")/.."
source install/gpu_setup.sh || exit 1
OUT=${OUT:-output/gpu}
mkdir -p "$OUT"
CFG=configs/mask_rcnn_R_50_FPN_scratch_gpu.yaml
deadline=$((SECONDS + ${STEP_SECONDS:-540}))
step=${1:?usage: gpu_session.sh check | train ITERS AMP [infer] [bench] [KEY VALUE ...]}
shift

# At least 1: "timeout 0" would mean no limit at all.
left() { local s=$((deadline - SECONDS)); echo $((s > 1 ? s : 1)); }

case $step in
check)
    { nvidia-smi; python3 -c "
import platform, torch, torchvision, cv2, numpy, detectron2, pycocotools
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'torchvision', torchvision.__version__, 'opencv', cv2.__version__, 'numpy',
      numpy.__version__, 'detectron2', detectron2.__version__)
print('gpu', torch.cuda.get_device_name(0), 'cpus', __import__('os').cpu_count())"
    } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
    # The timing first, on an otherwise idle machine.
    timeout "$(left)" python3 tools/benchmark.py --config-file $CFG --sections limit,train \
        --train-iters 15 --train-rounds 2 --output "$OUT/bench_train" "$@" \
        > "$OUT/bench_train.log" 2>&1
    tail -30 "$OUT/bench_train.log"
    # Then the suite, its small pipeline runs on CUDA, spread over the cores by pytest-xdist (in
    # the image; one thread a worker), tests/test_cuda.py and the files whose runs take their
    # device from TUMORSEG_TEST_DEVICE first. Real-data tests skip (the packed subset is not the
    # whole export they check); left out: Ray Tune's test (Ray is not in the image and is too
    # large to carry) and test_install.py (it needs the registry).
    cuda_files=$(grep -l "TINY\|TEST_DEVICE" tests/test_*.py | grep -v -x tests/test_cuda.py)
    rest=$(ls tests/test_*.py | grep -v -F -x -e tests/test_cuda.py -e tests/test_install.py \
        $(printf -- ' -e %s' $cuda_files))
    workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${SUITE_WORKERS:-14}")
    OMP_NUM_THREADS=1 DETECTRON2_DATASETS= TUMORSEG_TEST_DEVICE=cuda timeout "$(left)" \
        python3 -m pytest -p no:cacheprovider -v -rfEs --durations=20 $workers \
        --deselect tests/test_sweep.py::test_sweep_with_ray_backend \
        tests/test_cuda.py $cuda_files $rest 2>&1 | tee "$OUT/suite.log" | tail -40
    ;;
train)
    iters=${1:?ITERS}; amp=${2:?AMP True|False}; shift 2
    infer=0; bench=0
    while [ $# -gt 0 ] && { [ "$1" = infer ] || [ "$1" = bench ]; }; do
        if [ "$1" = infer ]; then infer=1; else bench=1; fi
        shift
    done
    name="r50_640_scratch_amp${amp}_${iters}it"
    run="output/gpu_runs/$name"
    # Kept for the test (and the benchmarks asked for) should the training be cut short.
    reserve=$((90 + 150 * infer + 150 * bench))
    # The learning rate drops tenfold at 75% and 90% of the run, as the CPU recipe's.
    timeout "$(( $(left) - reserve ))" python3 tools/train_net.py --config-file $CFG \
        OUTPUT_DIR "$run" SOLVER.MAX_ITER "$iters" SOLVER.AMP.ENABLED "$amp" \
        SOLVER.STEPS "($((iters * 3 / 4)),$((iters * 9 / 10)))" \
        SOLVER.CHECKPOINT_PERIOD "$((iters / 4))" TEST.EVAL_PERIOD "$iters" "$@" \
        > "$OUT/$name.log" 2>&1
    echo "train exit $?"; grep -E "eta:|Total training|AP50|intervals" "$OUT/$name.log" | tail -12
    weights="$run/model_final.pth"
    if [ ! -f "$weights" ] && [ -f "$run/last_checkpoint" ]; then
        weights="$run/$(cat "$run/last_checkpoint")"
        echo "training cut short: testing $weights"
        timeout "$(left)" python3 tools/train_net.py --config-file $CFG --eval-only \
            OUTPUT_DIR "$run" MODEL.WEIGHTS "$weights" "$@" >> "$OUT/$name.log" 2>&1
    fi
    if [ $infer = 1 ] && [ -f "$weights" ]; then
        timeout "$(left)" python3 tools/benchmark.py --config-file $CFG --sections limit,infer \
            --repeats 1 ${BENCH_ARGS:-} --output "$OUT/bench_infer" OUTPUT_DIR "$run" MODEL.WEIGHTS "$weights" \
            "$@" > "$OUT/bench_infer.log" 2>&1
        echo "inference benchmark exit $?"; tail -25 "$OUT/bench_infer.log"
    fi
    if [ $bench = 1 ]; then
        timeout "$(left)" python3 tools/benchmark.py --config-file $CFG --sections limit,train \
            --train-iters 8 --train-rounds 2 ${BENCH_ARGS:-} --output "$OUT/bench_train" "$@" \
            > "$OUT/bench_train.log" 2>&1
        echo "training benchmark exit $?"; tail -22 "$OUT/bench_train.log"
    fi
    # Everything but the checkpoints, in one file (the device tool brings back at most 8).
    tar czf "$OUT/$name.tar.gz" --exclude='*.pth' -C output/gpu_runs "$name"
    ;;
*)
    echo "unknown step '$step': check or train" >&2
    exit 2
    ;;
esac
