"""The networks: model cards, the registry, preprocessing and ONNX Runtime inference."""
