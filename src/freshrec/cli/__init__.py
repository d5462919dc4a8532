"""The ``freshrec`` command line: parses arguments and calls the packages."""
