"""`python -m eventqueue`: the same as the `eventqueue` command."""

from eventqueue.tools.cli import main

if __name__ == "__main__":
    main(prog_name="eventqueue")
