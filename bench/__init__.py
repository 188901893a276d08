"""mpic benchmarks: inference, training and accuracy, run by ``make bench`` (see docs/benchmarks.md)."""
