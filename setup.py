"""jssl: self-supervised learning in JAX/Flax, from one CPU to a pod."""
from pathlib import Path

from setuptools import find_packages, setup


def _requirements(name: str) -> list[str]:
    lines = Path(__file__).with_name(name).read_text().splitlines()
    return [x for x in (ln.split("#")[0].strip() for ln in lines) if x and not x.startswith("-r")]


setup(
    name="jssl",
    version="0.1.0",
    description="Self-supervised learning in JAX/Flax: sharding-aware losses, models, trainers.",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jssl", "jssl.*"]),
    package_data={"jssl.native": ["*.cc"]},  # built on first use (jssl/native/__init__.py)
    install_requires=_requirements("requirements.txt"),
    extras_require={
        "test": ["chex==0.1.92", "pytest==9.2.0", "ruff==0.17.6"],
        # Accelerators: the jax extras pull the matching jaxlib plugin.
        "cuda": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={"console_scripts": ["jssl=jssl.cli:main"]},
)
