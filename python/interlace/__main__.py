"""``python -m interlace``: the same as the ``interlace`` command."""

from interlace.cli import main

raise SystemExit(main())
