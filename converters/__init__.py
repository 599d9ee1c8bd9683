"""Framework side: export PyTorch and Keras models to ONNX with target layers kept as named outputs.

Each submodule imports its framework; importing this package imports none.
"""
