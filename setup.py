import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent
version = {}
exec((HERE / "keras_one" / "version.py").read_text(), version)

setup(
    name="keras-one",
    version=version["__version__"],
    description="Online ensemble knowledge distillation (ONE and its family) "
    "for Keras 3",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_one", "keras_one.*"]),
    # The `keras-one` entry point, outside the package: `--help` and bad
    # flags answer without importing TensorFlow (see keras_one_cli.py).
    py_modules=["keras_one_cli"],
    install_requires=[
        "keras>=3.12,<4",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it to download but does not declare it.
        "importlib_resources",
        "keras-tuner>=1.4.7",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "tensorboard>=2.18",
    ],
    extras_require={
        # TensorFlow comes as one of these, so that a machine keeps the
        # build it has: `tensorflow-cpu` (light, CPU only) or `tensorflow`.
        "cpu": ["tensorflow-cpu>=2.18"],
        "gpu": ["tensorflow[and-cuda]>=2.18"],
        "tf": ["tensorflow>=2.18"],
        # jax and torch run the backend-portable tests
        # (`KERAS_BACKEND=jax pytest -m backend_portable tests`). torch is
        # pinned, as Keras' own test requirements pin it: pip then takes
        # the 2.13.0+cpu wheel that the CI machines keep on disk, where any
        # newer torch would come as the multi-GB CUDA build.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.8",  # --no-loadscope-reorder
            "ruff>=0.6",
            "pdoc>=14",
            "jax",
            "torch==2.13.0",
            # The keras-hub students and teachers are tested too. keras-hub
            # itself needs tensorflow-text, which requires the full
            # `tensorflow` wheel (beside `tensorflow-cpu`, a second copy of
            # TensorFlow); the README's test command installs keras-hub
            # with --no-deps, and these are the dependencies it imports.
            "kagglehub!=1.0.1",
            "regex",
            "sentencepiece",
            "tokenizers",
        ],
        # keras-hub backbones, classifiers and presets as students
        # (`--model hub:<preset>`) and as pretrained teachers.
        "hub": ["keras-hub>=0.20"],
        "docs": ["pdoc>=14"],
    },
    entry_points={"console_scripts": ["keras-one=keras_one_cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
