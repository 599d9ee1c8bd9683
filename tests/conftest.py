"""Test-session set-up shared by every test file."""

# torch (and torchvision, which loads triton) must be imported before TensorFlow: with TensorFlow loaded
# first, importing triton's native module segfaults the whole process (seen with tensorflow-cpu 2.21 and
# torch 2.14.1). Collecting the Keras tests first would otherwise crash the suite.
import torch  # noqa: F401
import torchvision  # noqa: F401
