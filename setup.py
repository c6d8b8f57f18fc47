"""cover_jax: CoVeR (Co-training Videos and Images for Action Recognition) in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned: a set known to resolve together on Python 3.11 (see README).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "tensorflow-cpu==2.21.0",  # input pipelines only; never also list `tensorflow`
    "tensorflow-datasets==4.9.10",
    "clu==0.0.12",
    "tensorboard==2.21.0",  # clu's metric writers need it; TF no longer pulls it in
    "einops==0.8.2",
    "absl-py==2.5.1",
    "av==18.1.0",  # PyAV: video decoding for data preparation and predict
    "tqdm==4.70.1",  # progress bars of the data preparation tool
    "safetensors==0.8.0",  # HuggingFace checkpoints, read without pickle
    "importlib-resources==7.1.0",  # TFDS's registered datasets (imagenet2012) import it
    "matplotlib==3.11.2",  # the co-training study's picture (evaluation/study_report.py)
    # NumPy dtypes of JAX and TensorFlow: 0.7.0 takes 0.6 s longer to import, in
    # every process (benchmarks/startup.py; docs/performance.md).
    "ml_dtypes==0.6.0",
]

setup(
    name="cover_jax",
    version="0.1.0",
    description="CoVeR: co-training TimeSformer on videos and images, in JAX/Flax",
    packages=find_packages(include=["cover_jax", "cover_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # google-cloud-storage: Orbax's gs:// checkpoints (tests run a gs:// workdir
        # against an offline stand-in, tests/fake_gcs.py).
        "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "google-cloud-storage==3.17.1"],
        "tpu": ["jax[tpu]==0.10.2", "google-cloud-storage==3.17.1"],
        "gpu": ["jax[cuda12]==0.10.2"],
        # Reading PyTorch checkpoints (.pyth, pytorch_model.bin) with
        # torch.load(weights_only=True); never needed for .npz / safetensors.
        "torch": ["torch==2.13.0"],
        # The PyTorch reference of benchmarks/train_step.py --compare-torch. An
        # exact torch version: a range lets pip pull a multi-GB CUDA build.
        "bench": ["torch==2.13.0", "transformers==5.23.0"],
    },
)
