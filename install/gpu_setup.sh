# Source this in the repo root on a GPU machine that reaches no package registry (README "On a
# GPU"): it installs the wheels that `make gpu-bundle` packed into .gpu/ (Detectron2 and what the
# machine's own Python lacks; its torch, torchvision and OpenCV are used as they are) and points
# DETECTRON2_DATASETS at the packed TumorSeg subset.
if [ ! -d .gpu/wheels ]; then
    echo "gpu_setup: .gpu/wheels not found: run 'make gpu-bundle' on a machine with the registry" \
         "and carry .gpu (the device tool's carry: [\".gpu\"])." >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/tumorseg-site .gpu/wheels/*.whl || { return 1 2>/dev/null || exit 1; }
export PYTHONPATH="/tmp/tumorseg-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DETECTRON2_DATASETS="$PWD/.gpu/datasets"
export PYTHONUNBUFFERED=1
