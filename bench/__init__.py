"""bench: the command line that ties the stages together (``python -m bench --help``)."""
