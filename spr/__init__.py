"""SPR core: what the ingest, search and refiner stages share.

Configuration, segment ids, the segment catalog, the vector stores, proposal generation and
the RVMR metrics live here; the stage packages (``ingest``, ``services``, ``refiner``) import
from this package and never from each other.
"""

__version__ = "0.1.0"
