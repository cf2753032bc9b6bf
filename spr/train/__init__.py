"""The train stage (``spr train``): projector training (symmetric MIL-NCE) and refiner training
(ReLoCLNet-style objectives). Imports only the core; the command line wires it up."""
