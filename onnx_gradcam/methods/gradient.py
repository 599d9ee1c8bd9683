"""Gradient methods, emitted as ONNX nodes inside the explainer model so only maps leave the device.

Each method maps (activations A, gradients dA = d(score)/dA, layer) to per-channel contributions shaped
like A; :func:`channel_map` turns them into the raw map (N, h, w), ReLU of their channel sum (with
``eigen_smooth`` the host takes their first principal component instead). Constants take the type of the
tensor they meet. They follow pytorch-grad-cam 1.5.7's definitions (so maps compare one to one with it) except where
its definition departs from the paper in substance; each such place is said below. Axes come from
``layer.spatial_axes`` / ``layer.channel_axis``, so NCHW and NHWC layers are explained alike.

Methods that weight channels (Grad-CAM, Grad-CAM++, XGrad-CAM) compute one weight per image and channel
(spatial axes reduced, kept as size 1) and multiply the activations by it; methods that weight positions
(HiResCAM, Grad-CAM element-wise, LayerCAM) multiply element-wise.

Grad-CAM++ and XGrad-CAM use each channel's activation sum S, as their papers do for post-ReLU activations.
At a layer with signed activations S can cancel to about zero, and their maps then amplify the rounding of
their inputs (about 1000-fold measured at resnet50's layer3.1.conv3): prefer a layer after a ReLU for them.
"""

from __future__ import annotations

from typing import Callable

from ..graph.builder import NodeBuilder
from ..graph.layers import Layer

GradientMethod = Callable[[NodeBuilder, str, str, Layer], str]

# pytorch-grad-cam's XGradCAM adds 1e-7 to each channel's activation sum. After a ReLU the sum is about zero
# only where the whole channel is, which then contributes (weight * activations) about nothing to the map; so
# it is kept, and spares such channels a 0/0.
XGRADCAM_EPSILON = 1e-7


def _gradcam(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradient."""
    weights = b.op("ReduceMean", gradients, b.ints(layer.spatial_axes), keepdims=1)
    return b.op("Mul", activations, weights)


def _gradcam_plusplus(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential's derivatives, as the peer uses it):
    alpha = g^2 / (2 g^2 + sum_ab(A_ab) g^3) per position; channel weight = sum_ij alpha_ij * relu(g_ij).

    pytorch-grad-cam adds a constant 1e-6 to alpha's denominator. That is not in the paper and not
    scale-free: the denominator is O(g^2), and logit gradients at a network's last layers are often about
    1e-3 (g^2 ~ 1e-6), where the constant changes alpha by tens of percent, unevenly across positions. So
    the paper's formula is used; alpha is 0 where its denominator is 0 (at g = 0, where the peer's own
    ``where(grads != 0, ...)`` makes it 0, and at the pole S g = -2, which post-ReLU layers never reach for
    g > 0). tests/test_methods.py shows the difference and compares with the peer where its constant is
    negligible.
    """
    axes = b.ints(layer.spatial_axes)
    g2 = b.op("Mul", gradients, gradients)
    g3 = b.op("Mul", g2, gradients)
    sums = b.op("ReduceSum", activations, axes, keepdims=1)
    denominator = b.op("Add", b.op("Add", g2, g2), b.op("Mul", sums, g3))
    zero = b.scalar(0.0, denominator)
    alpha = b.op("Where", b.op("Equal", denominator, zero), zero, b.op("Div", g2, denominator))
    weights = b.op("ReduceSum", b.op("Mul", alpha, b.op("Relu", gradients)), axes, keepdims=1)
    return b.op("Mul", activations, weights)


def _xgradcam(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """XGrad-CAM (Fu et al. 2020): channel weight = sum_ij g_ij * A_ij / (sum_ab A_ab), i.e. the gradient
    averaged with the activations' own weights instead of uniformly."""
    axes = b.ints(layer.spatial_axes)
    sums = b.op("ReduceSum", activations, axes, keepdims=1)
    guarded = b.op("Add", sums, b.scalar(XGRADCAM_EPSILON, sums))
    weighted = b.op("ReduceSum", b.op("Mul", gradients, activations), axes, keepdims=1)
    return b.op("Mul", activations, b.op("Div", weighted, guarded))


def _hirescam(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """HiResCAM (Draelos & Carin 2020): sum over channels of g * A, the gradient not averaged over space, so
    the map is exactly each position's first-order contribution to the score."""
    return b.op("Mul", gradients, activations)


def _gradcam_elementwise(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """Grad-CAM element-wise (pytorch-grad-cam's own variant, no paper): HiResCAM with a ReLU on each
    product g * A before the channel sum, so negative evidence in one channel cannot cancel another's."""
    return b.op("Relu", b.op("Mul", gradients, activations))


def _layercam(b: NodeBuilder, activations: str, gradients: str, layer: Layer) -> str:
    """LayerCAM (Jiang et al. 2021): sum over channels of relu(g) * A, positive gradients weighting each
    position; it keeps fine detail at earlier layers, where Grad-CAM's spatial mean blurs it away."""
    return b.op("Mul", b.op("Relu", gradients), activations)


def channel_map(b: NodeBuilder, contributions: str, layer: Layer) -> str:
    """The raw map: ReLU of the contributions summed over channels, (N, h, w)."""
    return b.op("Relu", b.op("ReduceSum", contributions, b.ints([layer.channel_axis]), keepdims=0))


GRADIENT_METHODS: dict[str, GradientMethod] = {
    "gradcam": _gradcam,
    "hirescam": _hirescam,
    "gradcam-elementwise": _gradcam_elementwise,
    "gradcam++": _gradcam_plusplus,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
}


