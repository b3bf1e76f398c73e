"""``python -m napari_cellclass`` (also under ``torchrun -m napari_cellclass train ...``): the command line."""
import sys

from .cli import main

sys.exit(main())
