"""Data sets (core): TVR-Ranking-format annotation and query-feature files, and the synthetic
learning benchmark. Read by the train and eval stages; imports only the core."""
