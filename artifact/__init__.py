"""The packaging core: tensors in, bytes out, and back. Imports nothing from train/ or analysis/."""
