collect_ignore_glob = ["*.py"]  # candidates for `normspec validate`, not tests
