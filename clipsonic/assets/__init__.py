"""Data files shipped inside the package (mel filterbank, tokenizer vocabulary)."""
