"""`python -m trainer ...` and `torchrun --nproc_per_node=N -m trainer run temporal ...`."""
from trainer.cli import main

if __name__ == "__main__":
    main(prog_name="trainer")
