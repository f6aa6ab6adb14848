r"""``python -m torch_enf``: the :obj:`torch-enf` command."""
import sys

from torch_enf.cli import main

sys.exit(main())
