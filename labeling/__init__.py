"""Labels in and out: the labels table and its store (``store.py``), the simulator's truth
imported as labels (``simulated.py``). Training reads what this room writes; it trains
nothing itself."""
