"""The end-to-end HTTP benchmark behind ``bench/http.py``: the quote apps
(``apps.py``), the driver that starts servers and loads them with wrk
(``run.py``) and wrk's Zipf request script (``zipf.lua``)."""
