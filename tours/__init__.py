"""Walk-throughs that ``demo.py`` runs: one module per command, each with add_arguments(parser) and
run(args)."""
