"""Interoperability with other libraries' model folders (``diffusers_unet.py``, ``scheduler.py``,
``export.py``, ``import_.py``; docs/interop.md). None of it imports diffusers: the folders are
JSON and safetensors, written and read here."""
