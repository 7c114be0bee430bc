from setuptools import find_packages, setup

setup(
    name="tumorseg-d2",
    version="0.1.0",
    description="Detectron2 toolkit for finding and outlining brain tumors in MRI slices",
    packages=find_packages(include=("tumorseg_d2", "tumorseg_d2.*")),
    python_requires=">=3.10",
    # Versions are pinned in requirements.lock; detectron2 comes from tools/install_detectron2.py.
    install_requires=[
        "torch", "torchvision", "pycocotools", "opencv-python-headless", "fvcore", "iopath",
        "matplotlib", "imagehash", "tqdm", "tabulate", "yacs", "omegaconf", "Pillow", "numpy",
        "psutil", "onnx", "onnxruntime",
    ],
    extras_require={"test": ["pytest"], "ray": ["ray[tune]"]},
)
