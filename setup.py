"""interfusion_jax: a JAX/Flax functional reimplementation of InterFusion (ECCV 2024)."""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

CORE = [
    # CPU build by default; GPU/TPU installs: WORKSPACE.md section 5. On NVIDIA GPUs
    # jaxlib 0.10.2 - 0.11.0 lower f32 scatter-adds to compare-and-swap loops (hundreds
    # of times slower under contention); interfusion_jax.accel sets the XLA flag that
    # avoids it on import. 0.11.1+ is fixed upstream. TPU and CPU are unaffected.
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "ml_collections>=1.1.0",
    "absl-py",
    "numpy",
    "scipy",
    "scikit-learn",
    "transformers>=4.57,<5",  # last major with Flax models
    "diffusers>=0.39,<0.40",  # last minor with Flax models
    "safetensors",
    "imageio",
    "imageio-ffmpeg",
    "PyMCubes",  # marching cubes for mesh export (export.py)
    "xatlas",  # UV atlas of the textured meshes (mesh/texture.py)
    "trimesh",  # writes the textured OBJ + MTL + PNG and GLB (mesh/texture.py)
    "Pillow",  # the PNG texture
    "tqdm",
    "sentencepiece",  # T5 tokenizer of DeepFloyd IF (spiece.model)
]

# torch only ever lives behind extras: the core never imports it.
TORCH = ["torch==2.13.0"]  # this CPU wheel is on disk on the project machines

EXTRAS = {
    "test": ["pytest>=8"] + TORCH + ["smplx"],
    "tools": TORCH + ["smplx", "anny"],
}
EXTRAS["all"] = sorted(set(EXTRAS["test"] + EXTRAS["tools"]))

setup(
    name="interfusion_jax",
    version="0.1.0",
    description="Text to 3D human-object interaction (InterFusion) in JAX/Flax.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["interfusion_jax", "interfusion_jax.*"]),
    package_data={"interfusion_jax": ["assets/*", "assets/**/*", "nerf/*.cc"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
