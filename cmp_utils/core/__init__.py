"""The foundation every other package stands on: settings and paths (``config``), crash-safe file writes and
folder locks (``atomic``), the pinned CPU numerics (``numerics``, ``vendor_kernels``).

Nothing is re-exported here: ``cmp_utils/__init__.py`` pins the numerics through ``core.numerics`` before
anything imports torch, and ``core.config`` imports torch.
"""
