"""The packaging core: tensors in, bytes out, and back, on the runtime layer (artifact/runtime).

Imports nothing from train/ or analysis/. The public Python API is analysis.api."""
