"""The demo room: ``gatewise demo``'s acts (``main.py`` runs them in order), the closed-loop
replay (``closed_loop.py``, ``gatewise loop``) and their reports, and the steps both the acts
and the single commands print (``steps.py``). Rooms never import it; the CLI only calls it."""
