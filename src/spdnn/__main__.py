"""``python -m spdnn``: the same command line as the ``spdnn`` script."""
from .cli import main

if __name__ == "__main__":
    main()
