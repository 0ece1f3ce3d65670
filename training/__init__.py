"""Training the NumPy reference and the torch twin: data, the two training loops, the induction experiment."""
