"""hf_sparse's attention patterns and layouts."""
