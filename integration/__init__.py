"""hydraspeed: Hydra-composed 3D-parallel Megatron-Core GPT training on DeepSpeed."""

__version__ = "0.1.0"
