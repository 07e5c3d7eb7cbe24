"""Isolation for untrusted proxy code: static gate, warm evaluator slots (process or
Docker backend), and the pool that feeds them. See sandbox/README.md."""
