"""seg_jax: semantic and panoptic segmentation in JAX/Flax."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
    lines = (_HERE / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


_NOTEBOOK = ["jupyterlab>=4", "ipykernel>=6.29", "nbclient>=0.10", "nbformat>=5.10", "scipy>=1.11"]

setuptools.setup(
      name="seg_jax",
      version="0.1.0",
      description="Semantic and panoptic segmentation in JAX/Flax.",
      long_description=(_HERE / "README.md").read_text(),
      long_description_content_type="text/markdown",
      packages=setuptools.find_packages(include=["seg_jax", "seg_jax.*"]),
      python_requires=">=3.10",
      install_requires=_requirements(),
      extras_require={
          # What the notebooks need (notebooks/; matplotlib is a runtime requirement already).
          "notebook": _NOTEBOOK,
          # The tests run in two worker processes (pytest-xdist) and execute every notebook
          # (nbclient, through a Jupyter kernel).
          "test": ["pytest>=8", "pytest-xdist>=3.6", "nbclient>=0.10", "nbformat>=5.10",
                   "ipykernel>=6.29"],
      },
)
