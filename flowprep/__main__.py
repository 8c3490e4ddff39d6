"""`python -m flowprep ...` runs the flowprep command line."""
from flowprep.cli import main

if __name__ == "__main__":  # spawned worker processes re-import the main module: they must not run the CLI
    main(prog_name="flowprep")
