"""`python -m cellcorpus`."""

from cellcorpus.cli import main

main()
