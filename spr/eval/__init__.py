"""The eval stage (``spr eval``): NDCG@K at IoU for SP, SPR and the upper bound over a query file.
Imports only the core; the command line hands it a refiner."""
