"""Fast tests on fakes: no TensorFlow session, no servers of the product, no heavy subprocesses."""
