"""``python -m cvdm_cli ...``: the ``cvdm`` command without its console script."""

from cvdm_cli.cli.app import main

if __name__ == "__main__":
    main()
