"""Test-session set-up shared by every test file."""

# torch (and torchvision, which loads triton) must be imported before TensorFlow: with TensorFlow loaded
# first, importing triton's native module segfaults the whole process (seen with tensorflow-cpu 2.21 and
# torch 2.14.1). Collecting the Keras tests first would otherwise crash the suite.
import torch  # noqa: F401
import torchvision  # noqa: F401


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def resnet(tmp_path_factory):
    """torchvision resnet18 (random weights, eval), 8 images of 64x64, and its ONNX export (no extra layers)."""
    from converters.pytorch import export

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(8, 3, 64, 64)
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    export(model, images, path)
    return model, images, str(path)
