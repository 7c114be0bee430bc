# tumorseg-d2: `make demo` (train, evaluate, draw) and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tumorseg-env

.PHONY: env demo test baselines recipe benchmark gpu-bundle yolo-env yolo clean-env

env: $(STAMP)

# Rebuilt only when the pins or the install scripts change, so `make env` is cheap to repeat.
$(STAMP): requirements.lock setup.py install/install_detectron2.py install/detectron2_C_shim.py
	@start=$$(date +%s); set -e; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock; \
	$(PY) install/install_detectron2.py; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	touch $@; \
	echo "[make env] environment ready in $$(( $$(date +%s) - start )) s"

demo: env
	$(PY) tools/demo.py $(ARGS)

test: env
	$(PY) -m pytest tests $(ARGS)

# The baselines table (README "Baselines"): train each CPU config (finished runs are skipped,
# interrupted ones resumed), then compare them on the test split.
BASELINES := encoder_decoder_2level_cpu encoder_decoder_3level_cpu residual_encoder_decoder_cpu \
	unet_cpu mask_rcnn_R_18_FPN_256_bs1_cpu
baselines: env
	$(PY) tools/compare.py --train $(BASELINES:%=configs/baselines/%.yaml) \
		--output output/baselines $(ARGS)

# The from-scratch CPU recipe (README "Performance"): under an hour on 2 cores, then the test table.
recipe: env
	$(PY) tools/train_net.py --config-file configs/mask_rcnn_R_18_FPN_scratch_cpu_60min.yaml $(ARGS)

# Side by side with plain Detectron2; uses the recipe's weights when `make recipe` has run.
benchmark: env
	$(PY) tools/benchmark.py $(ARGS)

# What a GPU machine without a registry needs (README "On a GPU"): wheels and a data subset in .gpu/.
gpu-bundle: env
	$(PY) install/gpu_bundle.py --data $${DETECTRON2_DATASETS:-datasets}/tumorseg $(ARGS)

# The other side of the fair fight (README "Side by side with Ultralytics YOLO"): Ultralytics in
# an environment of its own, so that it never changes the toolkit's packages.
YOLO_VENV := .venv-yolo
YOLO_PINS := torch==2.14.1 torchvision==0.29.2 ultralytics==8.4.190 pycocotools==2.0.11
yolo-env: $(YOLO_VENV)/.stamp
$(YOLO_VENV)/.stamp:
	test -x $(YOLO_VENV)/bin/python || $(PYTHON) -m venv $(YOLO_VENV)
	$(YOLO_VENV)/bin/python -m pip install -q --disable-pip-version-check $(YOLO_PINS)
	touch $@

yolo: yolo-env
	$(YOLO_VENV)/bin/python references/ultralytics_yolo.py \
		--data $${DETECTRON2_DATASETS:-datasets}/tumorseg --output output/yolo $(ARGS)

clean-env:
	rm -rf $(VENV)
