"""`python -m fusion ...` runs the `fusion` console command."""
from fusion.cli import main

if __name__ == "__main__":
    main()
