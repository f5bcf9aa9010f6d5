"""The namespace of the compiled ops (``-DHF_SPARSE_NAMESPACE`` of kernels/csrc/namespace.h).

``hf_sparse`` here. The kernel package built for Hugging Face's ``kernels`` library
(:mod:`hf_sparse.integrations.kernel_hub`) ships ``_autograd.py`` and ``_fake.py`` unchanged beside its own copy of
this module naming its build's namespace, so the two register their formulas on whichever ops they sit next to.
"""

NAMESPACE = "hf_sparse"
