"""model-operator: from a ModelDeployment to an autoscaled Triton Inference Server fleet."""

__version__ = "0.1.0"
