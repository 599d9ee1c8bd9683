"""``python -m onnx_gradcam``: the command line."""

import sys

from .cli import main

sys.exit(main())
