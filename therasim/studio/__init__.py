"""therasim studio: a local web app to design personas, play them, and browse runs.

Above every layer, like the CLI (nothing imports it). ``app`` builds the FastAPI application
and holds its security; ``library``, ``forms``, ``play`` and ``runs`` do the work; the
``pages_*`` modules are the routes; ``docs/studio.md`` describes the pages.
"""
