"""``python -m deltaguard``: the same CLI as the ``deltaguard`` command."""

from deltaguard.cli import main

main()
