from setuptools import find_packages, setup

setup(
    name="tumorseg-d2",
    version="0.1.0",
    description="Detectron2 toolkit for finding and outlining brain tumors in MRI slices",
    packages=find_packages(include=("tumorseg_d2", "tumorseg_d2.*")),
    # configs/ ships inside the package (tumorseg_d2/configs links to it), so the demo and the
    # benchmarks find their configs without the source tree.
    package_data={"tumorseg_d2": ["configs/*.yaml", "configs/*/*.yaml"]},
    entry_points={"console_scripts": ["tumorseg = tumorseg_d2.cli:console"]},
    python_requires=">=3.10",
    # Versions are pinned in requirements.lock; detectron2 comes from install/install_detectron2.py.
    install_requires=[
        "torch", "torchvision", "pycocotools", "opencv-python-headless", "fvcore", "iopath",
        "matplotlib", "imagehash", "tqdm", "tabulate", "yacs", "omegaconf", "Pillow", "numpy",
        "psutil", "onnx", "onnxruntime", "pydicom", "nibabel", "scipy",
        "shapely",  # Detectron2 crops polygon masks with it (INPUT.CROP)
    ],
    extras_require={"test": ["pytest"], "ray": ["ray[tune]"]},
)
