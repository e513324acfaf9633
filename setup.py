"""Installs vma_jax: `pip install -e .` (library), `pip install -e ".[test]"` (with tests)."""

import setuptools

setuptools.setup(
    name="vma_jax",
    version="0.1.0",
    description=(
        "Variational Memory Addressing VAE (Bornschein et al., NeurIPS 2017) in JAX/Flax,"
        " trained with VIMCO, for few-shot generation of Omniglot characters."
    ),
    packages=setuptools.find_packages(include=["vma_jax", "vma_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "absl-py",  # logging in the library and the entry points' flags
        "jax>=0.8",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # imported by TFDS when it prepares Omniglot
        # TFDS needs TensorFlow to prepare Omniglot, and CLU's metric writers to write
        # TensorBoard summaries. The CPU build: JAX owns the accelerators.
        "tensorflow-cpu>=2.16; sys_platform == 'linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.16; sys_platform != 'linux' or platform_machine != 'x86_64'",
        "tensorboard",
        "matplotlib",  # the figures
        "pillow",  # reading the sampling command's images; image summaries
        "tqdm",  # the training progress bar
        "packaging",  # vma_jax.runtime compares installed versions with these requirements
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # Two test processes side by side (-n 2): compiling is mostly one core's work.
            "pytest-xdist>=3.5",
            "scipy>=1.11",
            # Independent VIMCO baselines (numpy substrate; test-only).
            "tensorflow-probability==0.25.0",
            # The notebooks, run headless in a Jupyter kernel with their parameters set.
            "papermill>=2.6",
            "ipykernel>=6",
            # Every process that imports JAX imports ml_dtypes: 0.7.0 takes 0.5 s to register
            # its NumPy ufunc loops, 0.6.0 0.09 s (2-core CPU), and the suite starts ~100 of
            # them. JAX accepts either (ml_dtypes>=0.5).
            "ml_dtypes>=0.5,<0.7",
        ],
    },
)
