"""The rpdist command line."""
