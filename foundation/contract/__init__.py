"""The model contract: the config, the checks every public door runs, the boundary that runs
them around each call, and the measure of agreement between the twins."""
