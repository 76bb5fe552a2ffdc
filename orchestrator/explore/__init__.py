"""Using a registered generator on this machine: samples written to files."""
