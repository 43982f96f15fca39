"""DALI pipeline definitions, the iterator factory, the training example and the benchmark."""
