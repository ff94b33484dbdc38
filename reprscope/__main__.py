"""``python -m reprscope`` (and ``torchrun -m reprscope``) runs the command line."""
from reprscope_cli.main import main

if __name__ == "__main__":
    main()
