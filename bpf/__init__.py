"""ferry's BPF programs as package data: the C sources (compiled by bcc on the node) and,
where the build made them, prebuilt ELF objects. Found through importlib.resources, so a
wheel install works like a checkout; nothing here is imported as code."""
