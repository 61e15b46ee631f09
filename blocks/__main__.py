"""`python -m blocks`: list every registered block with its parameter count."""

from blocks.catalog import print_catalog

if __name__ == "__main__":
    print_catalog()
