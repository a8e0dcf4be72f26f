"""Pure numpy kernels (no I/O): vocabulary, tokenization, ids, split and shuffle hashing."""
