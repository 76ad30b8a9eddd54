"""Qt widgets (thin): parameters -> a task job in a worker thread -> layers."""
from .._compat import avoid_triton_llvm_clash

# widgets are imported after the viewer (and its OpenGL) exists: guard torch's imports
avoid_triton_llvm_clash()
