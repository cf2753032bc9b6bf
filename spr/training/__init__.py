"""Learning and measuring: TVR-Ranking-format data, the synthetic benchmark, projector training
and evaluation. The refiner's own training lives with its model in :mod:`refiner.training`."""
