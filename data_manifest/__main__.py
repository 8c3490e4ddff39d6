"""`python -m data_manifest ...` runs the data-manifest command line."""
from data_manifest.cli import main

if __name__ == "__main__":
    main(prog_name="data-manifest")
