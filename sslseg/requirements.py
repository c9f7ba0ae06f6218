"""What the engine needs installed, in one place for pip, .ci/setup and the Slicer modules' install logic.

``REQUIREMENTS`` install normally; ``NO_DEPS_REQUIREMENTS`` with ``--no-deps`` (dynamic-network-architectures
declares timm, which pulls torchvision and a CUDA torch that can replace the torch of Slicer's PyTorch extension;
ResidualEncoderUNet imports neither). torch itself is not in these lists: inside Slicer the PyTorch extension installs
it (the right CUDA build for the driver), and SimpleITK ships with Slicer.
"""

# import name -> pip requirement
REQUIREMENTS = {
    "numpy": "numpy>=1.24",
    "SimpleITK": "SimpleITK>=2.2",
    "monai": "monai>=1.4",
    "einops": "einops",
}

NO_DEPS_REQUIREMENTS = {
    "dynamic_network_architectures": "dynamic-network-architectures>=0.4.4,<0.5",
}

# The oldest torch the engine runs on: torch.amp.GradScaler("cuda") and torch.serialization.safe_globals (the safe
# checkpoint allow-list) arrived in 2.5. Inside Slicer an older torch is offered the PyTorch extension's upgrade.
TORCH_MINIMUM = "2.5"
TORCH_REQUIREMENT = f"torch>={TORCH_MINIMUM}"

# Never installed over the host's own copy inside Slicer.
PROVIDED_BY_SLICER = ("torch", "SimpleITK", "requests", "numpy")
