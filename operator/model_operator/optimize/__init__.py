"""The optimization worker (`model-operator optimize`): load a model, quantize/clip/prune it,
convert it to ONNX or TorchScript, gate it on validation data, search candidate recipes, and
publish a Triton model repository with a report. See main.py for the CLI and exit codes and
pipeline.py for the steps."""
