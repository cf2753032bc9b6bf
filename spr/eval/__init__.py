"""The eval stage (``spr eval``): NDCG@K at IoU for SP, SPR and the upper bound over a query file.
Imports only the core; the command line hands it the search engine (:class:`spr.engine.MomentSearch`)
with the refiner to score SPR."""
