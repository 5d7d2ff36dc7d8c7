"""Studies built on snp_core whose results are the evidence in docs/ (not part of the library API)."""
