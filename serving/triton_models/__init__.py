"""Model code that runs inside Triton's Python backend, copied by the export as `<version>/model.py`.

These files import only what the Triton Python environment has (numpy, onnxruntime, transformers,
`triton_python_backend_utils`) and nothing from kdrank; `pairs.py` is copied beside the tokenizer.
"""
