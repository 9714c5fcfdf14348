"""asv benchmarks for normspec: every registered normalization x backend x shape x dtype x pass."""
